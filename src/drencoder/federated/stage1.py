"""DR-Encoder stage 1, orchestrated: warm-up, statistics release, prior, auto-encoder.

DESIGN.md §2 stage 1, in the simulator's terms (one shared base model, clients one after
another, only the LoRA state swapped):

1. every client starts from the global adapter and runs ``stage1.epochs`` local warm-up
   epochs of ``stage1.warmup_steps`` steps (default ``local.steps``) with
   :func:`~drencoder.lora.train_local`; the update of epoch e is the adapter after epoch e
   minus the adapter before it, restricted to the uplink layout (all blocks, or ``lora_B``
   only for FFA-LoRA) and flattened (:func:`warmup_updates`);
2. it keeps only per-block means and stds of those updates
   (:func:`collect_client_statistics`) and releases them through
   :class:`~drencoder.prior.StatisticsRelease` (clipped and noised unless
   ``stage1.release_noise = false``); the release's ``dp_event`` is charged once to every
   client;
3. the server pools the released statistics (``released_noise_std`` debiases the root mean
   square of the stds; with the release on, each pooled component is projected back onto
   the clients' clip ball of radius ``stage1.clip_norm``, which the true pooled statistics
   lie in), builds a :class:`~drencoder.prior.PriorSampler` and trains the
   auto-encoder of ``codec.architecture`` on prior samples only
   (:func:`~drencoder.codecs.train_autoencoder` refuses anything but a sampler).

Every client takes part. All randomness (batch order, local-training seeds, release noise,
auto-encoder init and samples, the check samples of the report) is drawn from the one
generator passed to :func:`run_stage1`, in a fixed order, so the result is a function of
(config, generator state). The auto-encoder is moved to the model's device.

The report holds, besides what was charged and trained, the norms of the clients'
*unreleased* statistics vectors and how many exceeded ``stage1.clip_norm``: a simulator
diagnostic for tuning the clip norm, which a real deployment would not see.
"""

from __future__ import annotations

import dataclasses
import time
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
from drencoder.errors import ConfigError
from drencoder.federated.workload import Workload
from drencoder.lora import (
    Layout,
    TrainSettings,
    adapter_delta,
    get_adapter_state,
    set_adapter_state,
    train_local,
)
from drencoder.prior import ClientStatistics, PriorSampler, StatisticsRelease, pool_statistics

CHECK_SAMPLES = 8
"""Fresh prior samples on which the report measures the trained auto-encoder."""

CONV_STAGES = (4, 3, 5, 2, 6)
"""Stages tried, in order, for the conv auto-encoder: the first with whole latent channels."""


def draw_seed(generator: torch.Generator) -> int:
    """A seed in [0, 2**62) drawn from ``generator`` (for ``train_local`` and friends)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


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

    See :func:`warmup_updates`; only the statistics leave this function, and the model's
    adapter is back at ``global_state`` when it returns.
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


def release_for(config: RunConfig) -> StatisticsRelease:
    """The statistics release ``config.stage1`` describes."""
    s1 = config.stage1
    return StatisticsRelease(
        enabled=s1.release_noise, clip_norm=s1.clip_norm, noise_multiplier=s1.noise_multiplier
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
    """JSON-ready summary (see :func:`run_stage1`)."""


def _model_device(model) -> torch.device:
    return next(p for p in model.parameters() if p.requires_grad).device


def run_stage1(
    model,
    global_state: dict[str, torch.Tensor],
    workload: Workload,
    config: RunConfig,
    *,
    layout: Layout,
    generator: torch.Generator,
    progress: bool = True,
) -> Stage1Result:
    """Run stage 1 for every client of ``workload`` and train the auto-encoder.

    ``model`` carries the LoRA adapter (``attach_lora``); it is left at ``global_state``.
    ``layout`` is the uplink layout (``adapter_layout(model, sent=config.lora.sent)``).

    ``report`` keys: ``clients``, ``epochs``, ``warmup_steps``, ``batch_size``,
    ``release`` (settings and ``noise_std``), ``pooling``, ``statistics_norms`` and
    ``clipped_clients`` (unreleased, simulator diagnostic), ``autoencoder`` (name,
    dimensions, architecture settings), ``training`` (``TrainReport.to_dict()`` without
    its time), ``prior_check`` (relative error and cosine on fresh prior samples),
    ``training_seconds`` and ``seconds`` (the whole stage). Every key but the two times is
    a deterministic function of (config, generator state).
    """
    from tqdm.auto import tqdm

    if not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a RunConfig, got {type(config).__name__}")
    if config.codec.architecture is Architecture.CONV:
        conv_stages_for(config.codec.compression_ratio)  # fail before the warm-up, not after
    start = time.perf_counter()
    s1 = config.stage1
    steps = s1.warmup_steps if s1.warmup_steps is not None else config.local.steps
    release = release_for(config)
    released, norms = [], []
    for client in tqdm(
        range(len(workload.clients)), desc="stage 1 warm-up", unit="client", disable=not progress
    ):
        batches = [
            workload.batches(
                client, steps=steps, batch_size=config.data.batch_size, generator=generator
            )
            for _ in range(s1.epochs)
        ]
        stats = collect_client_statistics(
            model, global_state, batches, config.local, layout=layout, seed=draw_seed(generator)
        )
        norms.append(float(stats.to_vector().double().norm()))
        released.append(release.release(stats, generator=generator))
    if not released:
        raise ConfigError("stage 1 needs at least one client, the workload has none")
    pooled = pool_statistics(
        released,
        method=s1.pooling,
        released_noise_std=release.noise_std,
        clip_norm=release.clip_norm if release.enabled else None,
    )
    sampler = PriorSampler(pooled)
    codec = make_autoencoder(sampler, config.codec, generator=generator)
    codec.to(_model_device(model))
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
        "epochs": s1.epochs,
        "warmup_steps": steps,
        "batch_size": config.data.batch_size,
        "release": {**release.to_dict(), "noise_std": release.noise_std},
        "pooling": s1.pooling.value,
        "statistics_norms": norms,
        "clipped_clients": sum(n > release.clip_norm for n in norms) if release.enabled else 0,
        "autoencoder": {
            "name": codec.name,
            **{k: v for k, v in codec.config().items() if k != "layout"},
        },
        "training": {k: v for k, v in training.to_dict().items() if k != "seconds"},
        "training_seconds": training.seconds,
        "prior_check": check.to_dict(),
        "seconds": time.perf_counter() - start,
    }
    return Stage1Result(codec=codec, sampler=sampler, dp_event=release.dp_event(), report=report)
