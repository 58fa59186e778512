"""One client's work in a round: train locally from the global adapter, form the update,
encode it and privatise it (docs/design.md §2 stage 2 steps 2-5).

The simulator passes the same base model to every client; only the LoRA state is swapped
(``set_adapter_state``), so memory does not grow with the number of clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from drencoder.codecs import Codec
from drencoder.lora import (
    Layout,
    TrainSettings,
    adapter_delta,
    assert_adapter_changed,
    get_adapter_state,
    set_adapter_state,
    train_local,
)
from drencoder.lora.adapter import trainable_parameters
from drencoder.lora.dp_sgd import DpSgd, DpSgdReport, GradientSpace, train_local_dp
from drencoder.mechanisms import ClipPoint, GaussianMechanism


def local_update(
    model,
    global_state: Mapping[str, torch.Tensor],
    batches: Sequence[Mapping[str, torch.Tensor]],
    settings: TrainSettings,
    *,
    layout: Layout,
    seed: int,
    progress: bool = False,
    desc: str = "local steps",
) -> tuple[torch.Tensor, list[float]]:
    """Train from ``global_state``; return the flat update Δ (in ``layout``) and losses."""
    set_adapter_state(model, global_state)
    losses = train_local(model, batches, settings, seed=seed, progress=progress, desc=desc)
    after = get_adapter_state(model)
    assert_adapter_changed(global_state, after, keys=layout.keys)
    delta = adapter_delta(global_state, after)
    return layout.flatten(layout.restrict(delta)), losses


def local_update_dp(
    model,
    global_state: Mapping[str, torch.Tensor],
    batches: Sequence[Mapping[str, torch.Tensor] | None],
    settings: TrainSettings,
    dp: DpSgd,
    *,
    layout: Layout,
    generator: torch.Generator,
    seed: int,
    space: GradientSpace | None = None,
) -> tuple[torch.Tensor, DpSgdReport]:
    """Record-level :func:`local_update`: DP-SGD from ``global_state``
    (:func:`~drencoder.lora.dp_sgd.train_local_dp`); the flat update Δ in ``layout`` and
    what DP-SGD did (losses of the non-empty steps, share of clipped gradients). The
    trainable matrices must be ``layout``'s blocks (they are for every method: FFA-LoRA
    trains and sends ``lora_B`` only)."""
    set_adapter_state(model, global_state)
    params = trainable_parameters(model)
    if tuple(params) != layout.keys:
        raise AssertionError("the trainable LoRA matrices are not the uplink layout's blocks")
    report = train_local_dp(
        model, batches, settings, dp, layout=layout, generator=generator, seed=seed, space=space
    )
    delta = adapter_delta(global_state, get_adapter_state(model))
    return layout.flatten(layout.restrict(delta)), report


def make_message(
    update: torch.Tensor,
    *,
    codec: Codec,
    mechanism: GaussianMechanism | None,
    clip_point: ClipPoint,
    generator: torch.Generator,
) -> torch.Tensor:
    """Encode and privatise one update.

    ``latent`` (default): z = Enc(Δ), then clip z and (local placement) add noise.
    ``update``: clip Δ and (local placement) add noise in the LoRA space, then encode;
    the encoder is then post-processing. ``mechanism=None`` sends Enc(Δ) as is
    (``fedavg-lora``: no clipping, no noise, no privacy).
    """
    message, _ = make_reply(
        update, codec=codec, mechanism=mechanism, clip_point=clip_point, generator=generator
    )
    return message


def make_reply(
    update: torch.Tensor,
    *,
    codec: Codec,
    mechanism: GaussianMechanism | None,
    clip_point: ClipPoint,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float | None]:
    """:func:`make_message` and the clip indicator ``1[‖x‖ ≤ C]`` of adaptive clipping,
    where x is what is clipped (the latent or the update, per ``clip_point``); the indicator
    is None without a mechanism.

    The indicator is released (inside the mechanism: the server adds noise to the count of
    them); the pre-clip norm it is computed from is not.
    """
    if mechanism is None:
        return codec.encode(update), None
    x = codec.encode(update) if ClipPoint(clip_point) is ClipPoint.LATENT else update
    return privatize(
        x, codec=codec, mechanism=mechanism, clip_point=clip_point, generator=generator
    )


def privatize(
    x: torch.Tensor,
    *,
    codec: Codec,
    mechanism: GaussianMechanism,
    clip_point: ClipPoint,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """The message and clip indicator of ``x``, a vector in the clipped space (the latent
    for ``clip_point = latent``, the update for ``update``): clip, noise (local placement),
    and, when the update was clipped, encode. The second half of :func:`make_reply`, which
    a privacy audit's canary clients enter with a vector of their own."""
    bit = 1.0 if float(x.detach().double().norm()) <= mechanism.clip_norm else 0.0
    message = mechanism.privatize(x, generator=generator)
    if ClipPoint(clip_point) is ClipPoint.UPDATE:
        message = codec.encode(message)
    return message, bit
