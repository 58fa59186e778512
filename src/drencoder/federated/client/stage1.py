"""DR-Encoder stage 1, the client's side: warm up, keep statistics, release them.

Every client starts from the global adapter and runs ``stage1.epochs`` local warm-up
epochs of ``stage1.warmup_steps`` steps (default ``local.steps``)
(:func:`~drencoder.lora.warmup_updates`); it keeps only per-block means and stds of those
updates (:func:`collect_client_statistics`) and releases them through
:class:`~drencoder.prior.StatisticsRelease` (clipped and noised unless
``stage1.release_noise = false``), with noise from its own generator
(:func:`release_client_statistics`). The server's side is
:mod:`drencoder.federated.server.stage1`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from drencoder.config import RunConfig
from drencoder.federated.protocol import Stage1Task, release_for, warmup_steps
from drencoder.federated.workload import Workload
from drencoder.lora import Layout, TrainSettings, warmup_updates
from drencoder.prior import ClientStatistics, StatisticsRelease


def collect_client_statistics(
    model,
    global_state: dict[str, torch.Tensor],
    batches_per_epoch: Sequence[Sequence[dict[str, torch.Tensor]]],
    settings: TrainSettings,
    *,
    layout: Layout,
    seed: int,
    progress: bool = False,
) -> ClientStatistics:
    """One client's per-block, per-epoch statistics of its warm-up updates (not released).

    See :func:`~drencoder.lora.warmup_updates`; only the statistics leave this function,
    and the model's adapter is back at ``global_state`` when it returns.
    """
    updates = warmup_updates(
        model,
        global_state,
        batches_per_epoch,
        settings,
        layout=layout,
        seed=seed,
        progress=progress,
    )
    return ClientStatistics.of(updates, layout=layout)


def release_client_statistics(
    model,
    global_state: dict[str, torch.Tensor],
    workload: Workload,
    task: Stage1Task,
    config: RunConfig,
    *,
    layout: Layout,
    noise_generator: torch.Generator,
    release: StatisticsRelease | None = None,
    progress: bool = False,
) -> tuple[ClientStatistics, float]:
    """Client side of stage 1: warm up, keep the statistics, release them.

    Returns the *released* statistics (clipped and noised with ``noise_generator`` unless
    the release is off), the only thing that leaves a client, and the norm of the
    unreleased statistics vector, a local diagnostic that must not be uploaded.
    ``release`` defaults to ``config.stage1``'s; a deployed client passes the release the
    server described, so that what it releases is what the server accounted.
    """
    data = torch.Generator().manual_seed(task.data_seed)
    batches = [
        workload.batches(
            task.client,
            steps=warmup_steps(config),
            batch_size=config.data.batch_size,
            generator=data,
        )
        for _ in range(config.stage1.epochs)
    ]
    stats = collect_client_statistics(
        model,
        global_state,
        batches,
        config.local,
        layout=layout,
        seed=task.train_seed,
        progress=progress,
    )
    norm = float(stats.to_vector().double().norm())
    release = release_for(config) if release is None else release
    return release.release(stats, generator=noise_generator), norm
