"""DR-Encoder stage 1, the server's side: per-client seeds, pooling, prior, auto-encoder.

docs/design.md §2 stage 1, in the simulator's terms (one shared base model, clients one after
another, only the LoRA state swapped):

1. every client starts from the global adapter and runs ``stage1.epochs`` local warm-up
   epochs of ``stage1.warmup_steps`` steps (default ``local.steps``) with
   :func:`~drencoder.lora.train_local`; the update of epoch e is the adapter after epoch e
   minus the adapter before it, restricted to the uplink layout (all blocks, or ``lora_B``
   only for FFA-LoRA) and flattened (:func:`~drencoder.lora.warmup_updates`);
2. it keeps only per-block means and stds of those updates
   (:func:`~drencoder.federated.client.stage1.collect_client_statistics`) and releases them through
   :class:`~drencoder.prior.StatisticsRelease` (clipped and noised unless
   ``stage1.release_noise = false``); the release's ``dp_event`` is charged once to every
   client;
3. the server pools the released statistics (``released_noise_std`` debiases the root mean
   square of the stds; with the release on, each pooled component is projected back onto
   the clients' clip ball of radius ``stage1.clip_norm``, which the true pooled statistics
   lie in), builds a :class:`~drencoder.prior.PriorSampler` and trains the
   auto-encoder of ``codec.architecture`` on prior samples only
   (:func:`~drencoder.codecs.train_autoencoder` refuses anything but a sampler).

The stage is split along the wire: :func:`stage1_tasks` (server: per-client seeds),
:func:`~drencoder.federated.client.stage1.release_client_statistics` (client: warm-up,
statistics, clipped and noised release) and :func:`train_codec` (server: pooling and the
auto-encoder). The simulator and the Flower apps call these same pieces;
:func:`~drencoder.federated.simulator.run_stage1` composes them in one process.
Batch order, local-training seeds, auto-encoder init and samples are drawn from the
server's generator in a fixed order; the release noise from the client's own generator.

The report holds, besides what was charged and trained, the norms of the clients'
*unreleased* statistics vectors and how many exceeded ``stage1.clip_norm``: a simulator
diagnostic for tuning the clip norm, which a real deployment would not see.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
import torch

from drencoder.codecs import (
    AutoencoderCodec,
    ConvAutoencoderCodec,
    MlpAutoencoderCodec,
    train_autoencoder,
)
from drencoder.codecs.report import reconstruction
from drencoder.config import Architecture, CodecConfig, RunConfig
from drencoder.errors import ClientDropoutWarning, ConfigError
from drencoder.federated.protocol import Stage1Task, failure_code, release_for, warmup_steps
from drencoder.federated.seeds import draw_seed
from drencoder.federated.server import budget
from drencoder.federated.server.state import ServerState
from drencoder.prior import ClientStatistics, PriorSampler, pool_statistics

CHECK_SAMPLES = 8
"""Fresh prior samples on which the report measures the trained auto-encoder."""

CONV_STAGES = (4, 3, 5, 2, 6)
"""Stages tried, in order, for the conv auto-encoder: the first with whole latent channels."""


def conv_stages_for(compression_ratio: float) -> int:
    """The first of :data:`CONV_STAGES` for which ``ratio · 4^stages`` is a whole number."""
    for stages in CONV_STAGES:
        channels = compression_ratio * 4**stages
        if channels >= 1 and abs(channels - round(channels)) < 1e-9:
            return stages
    raise ConfigError(
        f"codec.compression_ratio = {compression_ratio:g} cannot be met by the conv "
        f"auto-encoder: ratio · 4^stages must be a whole number for some stages in 2..6 "
        f"(e.g. 1/16, 1/64, 1/256); use such a ratio or codec.architecture = mlp"
    )


def make_autoencoder(
    sampler: PriorSampler,
    codec: CodecConfig,
    *,
    generator: torch.Generator,
    architecture: Architecture | None = None,
) -> AutoencoderCodec:
    """An untrained auto-encoder for ``sampler``'s prior (``codec.architecture`` by default)."""
    arch = Architecture(architecture if architecture is not None else codec.architecture)
    if arch is Architecture.CONV:
        return ConvAutoencoderCodec.for_prior(
            sampler,
            generator=generator,
            compression_ratio=codec.compression_ratio,
            stages=conv_stages_for(codec.compression_ratio),
            normalization=codec.normalization,
        )
    return MlpAutoencoderCodec.for_prior(
        sampler,
        generator=generator,
        compression_ratio=codec.compression_ratio,
        chunk_size=codec.chunk_size,
        normalization=codec.normalization,
    )


@dataclass
class Stage1Result:
    """What stage 1 hands to stage 2 and to the run report."""

    codec: AutoencoderCodec
    """The auto-encoder, trained on prior samples only, on the model's device."""
    sampler: PriorSampler
    """The pooled prior (``sampler.pooled.to_dict()`` is JSON-ready, for checkpoints)."""
    dp_event: dp_accounting.DpEvent
    """The statistics release, to be charged once to every client."""
    report: dict
    """JSON-ready summary (see :func:`~drencoder.federated.simulator.run_stage1`)."""


def model_device(model) -> torch.device:
    return next(p for p in model.parameters() if p.requires_grad).device


def stage1_tasks(num_clients: int, *, generator: torch.Generator) -> list[Stage1Task]:
    """Server side: one task per client, seeds drawn from ``generator`` in client order."""
    return [
        Stage1Task(client=c, data_seed=draw_seed(generator), train_seed=draw_seed(generator))
        for c in range(num_clients)
    ]


def train_codec(
    released: Sequence[ClientStatistics],
    config: RunConfig,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    statistics_norms: Sequence[float] | None = None,
    progress: bool = True,
) -> Stage1Result:
    """Server side of stage 1: pool the released statistics, train the auto-encoder.

    ``released`` holds what the clients that replied uploaded. ``statistics_norms`` (the
    clients' unreleased norms) is known only inside a simulation; it is reported when
    given. See :func:`~drencoder.federated.simulator.run_stage1` for the report's keys.
    """
    if not released:
        raise ConfigError(
            "stage 1 needs the statistics of at least one client, none arrived; check "
            "that clients are connected (or that the workload has clients)"
        )
    if config.codec.architecture is Architecture.CONV:
        conv_stages_for(config.codec.compression_ratio)
    start = time.perf_counter()
    release = release_for(config)
    pooled = pool_statistics(
        list(released),
        method=config.stage1.pooling,
        released_noise_std=release.noise_std,
        clip_norm=release.clip_norm if release.enabled else None,
    )
    sampler = PriorSampler(pooled)
    codec = make_autoencoder(sampler, config.codec, generator=generator)
    codec.to(device)
    training = train_autoencoder(
        codec,
        sampler,
        generator=generator,
        steps=config.codec.train_steps,
        lr=config.codec.lr,
        progress=progress,
    )
    check = reconstruction(
        codec, sampler.sample(CHECK_SAMPLES, generator=generator), what="prior samples"
    )
    report = {
        "clients": len(released),
        "epochs": config.stage1.epochs,
        "warmup_steps": warmup_steps(config),
        "batch_size": config.data.batch_size,
        "release": {**release.to_dict(), "noise_std": release.noise_std},
        "pooling": config.stage1.pooling.value,
    }
    if statistics_norms is not None:
        norms = list(statistics_norms)
        report["statistics_norms"] = norms
        report["clipped_clients"] = (
            sum(n > release.clip_norm for n in norms) if release.enabled else 0
        )
    report.update(
        {
            "autoencoder": {
                "name": codec.name,
                **{k: v for k, v in codec.config().items() if k != "layout"},
            },
            "training": {k: v for k, v in training.to_dict().items() if k != "seconds"},
            "training_seconds": training.seconds,
            "prior_check": check.to_dict(),
            "seconds": time.perf_counter() - start,
        }
    )
    return Stage1Result(codec=codec, sampler=sampler, dp_event=release.dp_event(), report=report)


def release_statistics(server: ServerState) -> tuple[list, list, dict]:
    """Stage 1's statistics release: charge it, ask every client, keep what arrived.

    Returns the released statistics and unreleased norms (simulation only; None entries
    otherwise) of the clients that replied, in client order, and the failures."""
    tasks = stage1_tasks(server.config.clients, generator=server.generators["stage1"])
    if server.spec.private:  # written ahead: charged before any client is asked
        server.charge(
            budget.statistics_event(server.release, server.relation),
            kind="statistics",
            label=f"stage-1 statistics, {server.relation.value}",
        )
    replies = server.pool().release_statistics(tasks, global_state=server.global_state)
    received = {c: r for c, r in replies.items() if not isinstance(r, BaseException)}
    failed = {c: failure_code(r) for c, r in replies.items() if isinstance(r, BaseException)}
    # Validation point: the received (noised) statistics, before pooling.
    if len(received) < len(tasks):
        warnings.warn(
            f"stage 1: {len(received)} of {len(tasks)} clients sent statistics; the "
            f"prior is pooled from those (failed: {failed}); the release is still "
            "charged to every client",
            ClientDropoutWarning,
            stacklevel=2,
        )
    order = sorted(received)
    return [received[c][0] for c in order], [received[c][1] for c in order], failed


def stats_bytes(layout, config: RunConfig) -> int:
    """Bytes one client uploads in stage 1: a mean and a std per block per epoch."""
    return 2 * len(layout.blocks) * config.stage1.epochs * 4
