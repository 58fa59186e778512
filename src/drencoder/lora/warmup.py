"""Flat LoRA updates of a few local epochs, one per epoch (DR-Encoder's warm-up).

A client's stage-1 warm-up (its statistics are of these updates) and the server's
updates on public data (``codec.basis = proxy``) both call :func:`warmup_updates`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from drencoder.errors import ConfigError
from drencoder.lora.adapter import adapter_delta, get_adapter_state, set_adapter_state
from drencoder.lora.layout import Layout
from drencoder.lora.training import TrainSettings, train_local


def warmup_updates(
    model,
    global_state: dict[str, torch.Tensor],
    batches_per_epoch: Sequence[Sequence[dict[str, torch.Tensor]]],
    settings: TrainSettings,
    *,
    layout: Layout,
    seed: int,
    progress: bool = False,
) -> list[torch.Tensor]:
    """One flat update per local epoch, starting from ``global_state``; CPU float32 ``[d]``.

    Epoch e trains one step per batch of ``batches_per_epoch[e]`` (``settings.steps`` is
    replaced by that count) with a fresh optimizer, continuing from the adapter epoch e−1
    left. The model's adapter is set back to ``global_state`` afterwards, also on error.
    """
    if not batches_per_epoch or any(len(b) == 0 for b in batches_per_epoch):
        raise ConfigError(
            f"warm-up needs at least one epoch of at least one batch, got epochs of "
            f"{[len(b) for b in batches_per_epoch]} batches"
        )
    seeds = torch.randint(
        0, 2**62, (len(batches_per_epoch),), generator=torch.Generator().manual_seed(seed)
    ).tolist()
    updates = []
    try:
        set_adapter_state(model, global_state)
        for e, (batches, epoch_seed) in enumerate(zip(batches_per_epoch, seeds, strict=True)):
            before = get_adapter_state(model)
            train_local(
                model,
                list(batches),
                dataclasses.replace(settings, steps=len(batches)),
                seed=int(epoch_seed),
                progress=progress,
                desc=f"warm-up epoch {e + 1}/{len(batches_per_epoch)}",
            )
            delta = adapter_delta(before, get_adapter_state(model))
            updates.append(layout.flatten(layout.restrict(delta)).cpu())
    finally:
        set_adapter_state(model, global_state)
    return updates
