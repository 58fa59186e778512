"""Loading a saved PEFT adapter (``run_dir/adapter`` as ``drencoder run`` writes it).

``load_adapter(model, directory)`` wraps the base model with the adapter found in
``directory`` (``adapter_config.json`` + ``adapter_model.safetensors``) through
``peft.PeftModel.from_pretrained``. Only local files are read: ``directory`` must exist,
so PEFT never takes it for a hub repository id. The base model is modified in place
(PEFT swaps the target layers), as with ``attach_lora``. The adapter is frozen and the
model is returned in eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path

from drencoder.errors import AssetError, ConfigError

ADAPTER_CONFIG = "adapter_config.json"


def load_adapter(model, directory: str | os.PathLike[str]):
    """``PeftModel`` = ``model`` + the adapter saved in ``directory`` (module docstring)."""
    from peft import PeftModel

    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(
            f"adapter directory {str(folder)!r} does not exist; pass the adapter/ folder of a "
            f"run directory (drencoder run writes run_dir/adapter)"
        )
    if not (folder / ADAPTER_CONFIG).is_file():
        hint = (
            f"; did you mean {str(folder / 'adapter')!r}?"
            if (folder / "adapter" / ADAPTER_CONFIG).is_file()
            else "; pass the adapter/ folder of a run directory"
        )
        raise AssetError(f"{folder} holds no {ADAPTER_CONFIG}, so it is not a PEFT adapter{hint}")
    if isinstance(model, PeftModel) or any(".lora_" in n for n, _ in model.named_parameters()):
        raise ConfigError("the model already carries a LoRA adapter; pass the bare base model")
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise AssetError(f"could not load the PEFT adapter in {str(folder)!r}: {exc}") from exc
    peft_model.eval()
    return peft_model
