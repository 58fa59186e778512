"""``load_model``: a registered name or a local folder to ``(model, tokenizer)``, offline.

Nothing here reaches a model hub: every ``from_pretrained`` call passes
``local_files_only=True`` and only ever sees a local folder, whatever ``HF_HUB_OFFLINE``
says. Models that need ``trust_remote_code`` are refused by transformers (it is never set).

Tokenizer conventions, the same for every model so that data and evaluation code can rely
on them:

* a tokenizer without a pad token gets its EOS token as pad token (the model's
  ``config.pad_token_id`` and ``generation_config.pad_token_id`` follow when unset). Padding
  positions must therefore be masked through ``attention_mask`` and labels set to -100;
  they are never told apart by token id.
* ``padding_side`` is set to ``"right"``: training batches and log-likelihood scoring index
  real tokens through the attention mask. Code that batches prompts for ``generate`` must
  switch to ``"left"`` itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from drencoder.errors import AssetError, ConfigError
from drencoder.models.cache import prepare_model, quiet_transformers
from drencoder.models.registry import DEFAULT_MODEL, ModelSpec, resolve

PADDING_SIDE = "right"


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"dtype must be a floating torch.dtype such as torch.float32 or torch.bfloat16, "
            f"got dtype={dtype!r}"
        )


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be like 'cpu' or 'cuda:0', got device={device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was requested but CUDA is not available here")
    return dev


def _setup_tokenizer(tokenizer, model) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise AssetError(
                "the tokenizer has neither a pad nor an EOS token; add a pad token to the "
                "model folder (tokenizer.add_special_tokens) and save it again"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = PADDING_SIDE
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _unreadable_weights(folder: Path) -> Path | None:
    """The first ``*.safetensors`` file in ``folder`` whose header cannot be read."""
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception:
            return path
    return None


def load_folder(folder: Path, *, dtype: torch.dtype, device: torch.device):
    """Load a local Hugging Face causal-LM folder; errors become ``AssetError``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dtype, local_files_only=True
            )
    except Exception as exc:  # transformers, tokenizers, safetensors and json all raise here
        broken = _unreadable_weights(folder)
        what = f"{broken.name} is truncated or corrupt" if broken else _one_line(exc)
        raise AssetError(
            f"could not load a causal LM and its tokenizer from {str(folder)!r}: {what}; "
            "save the model again with save_pretrained() or point model.name at another "
            "folder"
        ) from exc
    model.to(device)
    model.eval()
    _setup_tokenizer(tokenizer, model)
    return model, tokenizer


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = True,
):
    """Load a causal LM and its tokenizer, fully offline; returns ``(model, tokenizer)``.

    ``name_or_path`` is a registered name (see ``drencoder.models.MODELS``; default
    ``"smollm2-135m"``) or the path of a local Hugging Face model folder. A registered
    model is converted from its GGUF into the cache on first use (one progress bar on
    stderr unless ``progress=False``, ~25 s for SmolLM2 on 2 cores) and loaded from there
    afterwards (~1 s). The cache stores fp32; ``dtype`` is applied at load time.
    transformers' own progress bars are silenced; its warnings are not.

    The model is returned in eval mode on ``device``: place it there before attaching
    LoRA (``drencoder.lora.attach_lora``), never after. See the module docstring for the
    tokenizer conventions (pad = EOS when missing, right padding).
    """
    _check_dtype(dtype)
    dev = _check_device(device)
    target = resolve(name_or_path)
    if isinstance(target, ModelSpec):
        target = prepare_model(target, progress=progress)
    return load_folder(target, dtype=dtype, device=dev)
