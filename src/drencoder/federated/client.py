"""One client's work in a round: train locally from the global adapter, form the update,
encode it and privatise it (DESIGN §2 stage 2 steps 2-5).

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
    if mechanism is None:
        return codec.encode(update)
    if ClipPoint(clip_point) is ClipPoint.LATENT:
        return mechanism.privatize(codec.encode(update), generator=generator)
    return codec.encode(mechanism.privatize(update, generator=generator))
