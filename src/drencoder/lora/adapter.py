"""PEFT LoRA on a base model: attach deterministically, read/write the adapter, form updates.

Adapter key format. An adapter state is a ``dict[str, Tensor]`` keyed exactly like PEFT's
saved ``adapter_model.safetensors``: the ``PeftModel`` parameter name with the adapter-name
component (``default``) removed, e.g.::

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   # shape (r, in)
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight   # shape (out, r)

so a state can be saved with safetensors and read back by PEFT's
``set_peft_model_state_dict``. Keys do not depend on the adapter name, the device or the
order of ``named_parameters``; the flat-vector order is the one ``Layout`` fixes (natural
sort: layers in depth order; within a layer the target modules alphabetically, each
``lora_A`` before ``lora_B``). States returned here are detached float32 copies.

Determinism. ``attach_lora`` runs PEFT's initialisation (``lora_A`` Kaiming-uniform,
``lora_B`` zero) inside a forked, seeded RNG scope: the same seed gives the same ``lora_A``
on every machine and process, and the caller's global RNG state is unchanged afterwards.
FFA-LoRA relies on this: every party can regenerate the frozen ``lora_A`` from the seed.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Mapping

import torch

from drencoder.errors import ConfigError, DrencoderError
from drencoder.lora._rng import check_seed, seeded
from drencoder.lora.layout import Layout, natural_key
from drencoder.lora.settings import LoraSettings, SentBlocks

_A_KINDS = frozenset({"lora_A", "lora_embedding_A"})
_B_KINDS = frozenset({"lora_B", "lora_embedding_B"})


class AdapterUpdateError(DrencoderError):
    """A local training step did not change the LoRA weights the way it must.

    The classic silent failure of DP LoRA (Opacus issue #820): training "runs", the loss
    is logged, the accountant charges epsilon, and the adapter never moves.
    """


def block_kind(key: str) -> str | None:
    """``"A"`` for a ``lora_A`` matrix, ``"B"`` for ``lora_B``, ``None`` otherwise."""
    parts = set(key.split("."))
    if parts & _A_KINDS:
        return "A"
    if parts & _B_KINDS:
        return "B"
    return None


def is_b_block(key: str) -> bool:
    return block_kind(key) == "B"


def _require_peft(model) -> None:
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ConfigError(
            f"expected a model returned by attach_lora (a peft.PeftModel), got "
            f"{type(model).__name__}"
        )


# model -> (active adapter, its parameters by key): finding them walks every parameter of
# the model, which a cross-device client's update did several times (a tenth of its time).
# The parameters of an adapter keep their identity (set_adapter_state and ``.to`` change
# values in place); another active adapter is looked up afresh.
_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _adapter_params(peft_model) -> dict[str, torch.nn.Parameter]:
    """Normalised key -> live parameter, for the active adapter's LoRA matrices.

    A model that wraps a PEFT model (``peft_model`` attribute, e.g. the prefix-cached top
    of :mod:`drencoder.lora.prefix`) stands for the model it wraps.
    """
    peft_model = getattr(peft_model, "peft_model", peft_model)
    _require_peft(peft_model)
    name = peft_model.active_adapter
    cached = _PARAMS.get(peft_model)
    if cached is not None and cached[0] == name:
        return dict(cached[1])
    out: dict[str, torch.nn.Parameter] = {}
    for full, param in peft_model.named_parameters():
        parts = full.split(".")
        for i in range(1, len(parts)):
            if parts[i] == name and parts[i - 1].startswith("lora_"):
                out[".".join(parts[:i] + parts[i + 1 :])] = param
                break
    if not out:
        raise ConfigError(f"the model has no LoRA parameters for adapter {name!r}")
    _PARAMS[peft_model] = (name, out)
    return dict(out)


def _check_targets(model: torch.nn.Module, targets: Iterable[str]) -> None:
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise ConfigError(
            f"lora target_modules {missing} match no module of {type(model).__name__}; "
            f"its linear layers are named {linear}"
        )


def num_decoder_layers(model: torch.nn.Module) -> int:
    """The number of decoder layers of a causal LM (``config.num_hidden_layers``)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(
            f"cannot tell how many decoder layers {type(model).__name__} has (no "
            "config.num_hidden_layers); use lora layers = 'all'"
        )
    return n


def adapted_layers(peft_model) -> tuple[int, ...]:
    """The sorted decoder-layer indices that carry a LoRA matrix (``.layers.<i>.`` keys)."""
    found = set()
    for key in _adapter_params(peft_model):
        parts = key.split(".")
        for i in range(len(parts) - 1):
            if parts[i] == "layers" and parts[i + 1].isdigit():
                found.add(int(parts[i + 1]))
                break
    return tuple(sorted(found))


def attach_lora(
    model: torch.nn.Module,
    settings: LoraSettings,
    *,
    seed: int,
    device: str | torch.device | None = None,
):
    """Wrap ``model`` with a fresh LoRA adapter (PEFT, adapter name ``"default"``).

    The base model is modified in place (PEFT swaps the target layers) and its weights are
    frozen; the returned ``PeftModel`` shares them. ``device``, when given, moves the model
    *before* wrapping: moving after ``get_peft_model`` is the ordering behind Opacus #820
    (LoRA weights silently never updated). ``lora_A`` is drawn from ``seed`` (see module
    docstring); ``lora_B`` starts at zero, so the wrapped model computes exactly what the
    base model did. With ``settings.train_a=False`` (FFA-LoRA) ``lora_A`` is frozen.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    check_seed(seed)
    if not isinstance(settings, LoraSettings):
        raise ConfigError(f"settings must be a LoraSettings, got {type(settings).__name__}")
    if isinstance(model, PeftModel) or any(".lora_" in n for n, _ in model.named_parameters()):
        raise ConfigError("the model already carries a LoRA adapter; pass the bare base model")
    if device is not None:
        model.to(device)
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ConfigError("the model has parameters on the meta device; materialise it first")
    _check_targets(model, settings.target_modules)
    layers = None if settings.layers == "all" else settings.layer_indices(num_decoder_layers(model))
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=True,
        layers_to_transform=None if layers is None else list(layers),
        layers_pattern=None if layers is None else "layers",
    )
    was_training = model.training
    with seeded(seed, model), warnings.catch_warnings():
        # PEFT 0.21 reads transformers' deprecated ``is_gradient_checkpointing``.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        peft_model = get_peft_model(model, config)
    peft_model.train(was_training)  # new LoRA modules start in train mode; match the base
    if not settings.train_a:
        for key, param in _adapter_params(peft_model).items():
            if block_kind(key) == "A":
                param.requires_grad_(False)
    return peft_model


def get_adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """Detached float32 copies of every LoRA matrix (trainable or frozen), by normalised key."""
    return {
        key: param.detach().to(dtype=torch.float32, copy=True)
        for key, param in _adapter_params(peft_model).items()
    }


def set_adapter_state(peft_model, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the adapter in place; keys and shapes must match exactly.

    Exact (bit for bit) when the adapter is float32, which it is on a float32 base model;
    on a bf16/fp16 base the values are rounded to that dtype.
    """
    params = _adapter_params(peft_model)
    Layout.from_shapes({k: tuple(p.shape) for k, p in params.items()}).check(state)
    bad = [k for k in sorted(state, key=natural_key) if not torch.isfinite(state[k]).all()]
    if bad:
        raise ConfigError(f"adapter state has NaN or infinite values in {bad[:3]}")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])


def adapter_layout(peft_model, *, sent: str | SentBlocks = SentBlocks.ALL) -> Layout:
    """The ``Layout`` of the adapter, or of its ``lora_B`` blocks only (FFA-LoRA uplink)."""
    sent = SentBlocks.parse(sent)
    params = _adapter_params(peft_model)
    layout = Layout.from_shapes({k: tuple(p.shape) for k, p in params.items()})
    return layout.select(is_b_block) if sent is SentBlocks.B_ONLY else layout


def trainable_parameters(peft_model) -> dict[str, torch.nn.Parameter]:
    """The live adapter matrices with ``requires_grad``, by normalised key in layout order."""
    params = _adapter_params(peft_model)
    return {k: params[k] for k in sorted(params, key=natural_key) if params[k].requires_grad}


def trainable_keys(peft_model) -> tuple[str, ...]:
    """Keys of the adapter matrices with ``requires_grad``, in layout order."""
    params = _adapter_params(peft_model)
    return tuple(sorted((k for k, p in params.items() if p.requires_grad), key=natural_key))


def adapter_delta(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The update Δ = after − before per key, in float32 (flatten with ``Layout.flatten``)."""
    Layout.from_state(before).check(after)
    return {k: after[k].to(torch.float32) - before[k].to(torch.float32) for k in before}


def apply_delta(
    state: Mapping[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    *,
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """A new state ``state + scale * delta``; ``delta`` may cover a subset (e.g. B only)."""
    extra = sorted(set(delta) - set(state), key=natural_key)
    if extra:
        raise ConfigError(f"delta has keys the adapter state lacks: {extra[:3]}")
    Layout.from_state(delta).check({k: state[k] for k in delta})
    out = {k: v.to(torch.float32, copy=True) for k, v in state.items()}
    for k, d in delta.items():
        out[k] += scale * d.to(device=out[k].device, dtype=torch.float32)
    return out


def assert_adapter_changed(
    before: Mapping[str, torch.Tensor],
    after: Mapping[str, torch.Tensor],
    *,
    keys: Iterable[str] | None = None,
    strict: bool = False,
) -> None:
    """Raise ``AdapterUpdateError`` unless local training moved the adapter sensibly.

    ``keys`` are the matrices that were trained (``trainable_keys(model)``; default: all).
    Checks, in order: ``after`` is finite; no matrix outside ``keys`` changed (a frozen
    FFA-LoRA ``lora_A`` that moved means the optimizer saw it); the trained set as a whole
    changed; every trained ``lora_B`` changed. ``lora_A`` is not required to change unless
    ``strict``: PEFT starts ``lora_B`` at zero, so the first step gives ``lora_A`` a zero
    gradient and only from the second step on does it move.
    """
    layout = Layout.from_state(before)
    layout.check(after)
    trained = set(layout.keys if keys is None else keys)
    unknown = sorted(trained - set(layout.keys), key=natural_key)
    if unknown:
        raise ConfigError(f"keys not in the adapter state: {unknown[:3]}")
    nonfinite = [k for k in layout.keys if not torch.isfinite(after[k]).all()]
    if nonfinite:
        raise AdapterUpdateError(
            f"adapter has NaN or infinite values after training in {nonfinite[:3]}"
        )
    changed = {k: not torch.equal(before[k], after[k]) for k in layout.keys}
    moved_frozen = [k for k in layout.keys if k not in trained and changed[k]]
    if moved_frozen:
        raise AdapterUpdateError(
            f"{len(moved_frozen)} frozen adapter matrices changed, e.g. {moved_frozen[:2]}; "
            f"the optimizer was given parameters that should stay fixed"
        )
    ordered = [k for k in layout.keys if k in trained]
    if not any(changed[k] for k in ordered):
        raise AdapterUpdateError(
            f"none of the {len(ordered)} trained adapter matrices changed: the optimizer "
            f"steps did not reach the LoRA weights (learning rate 0, no gradient, or the "
            f"model was moved to its device after attach_lora; see Opacus issue #820)"
        )
    must = ordered if strict else [k for k in ordered if block_kind(k) == "B"]
    stuck = [k for k in must if not changed[k]]
    if stuck:
        raise AdapterUpdateError(
            f"{len(stuck)} of {len(must)} trained {'adapter' if strict else 'lora_B'} "
            f"matrices did not change, e.g. {stuck[:2]}"
        )
