"""DR-Encoder stage 1, orchestrated: warm-up, statistics release, prior, auto-encoder.

docs/design.md §2 stage 1, in the simulator's terms (one shared base model, clients one after
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

The stage is split along the wire: :func:`stage1_tasks` (server: per-client seeds),
:func:`release_client_statistics` (client: warm-up, statistics, clipped and noised
release) and :func:`train_codec` (server: pooling and the auto-encoder). The simulator and
the Flower apps call these same pieces; :func:`run_stage1` composes them in one process.
Batch order, local-training seeds, auto-encoder init and samples are drawn from the
server's generator in a fixed order; the release noise from the client's own generator.

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


@dataclass(frozen=True)
class Stage1Task:
    """What the server sends one client for its stage-1 warm-up (besides the adapter).

    The seeds fix the client's batch order and training randomness; they come from the
    server's ``stage1`` generator. The release noise does *not*: the client draws it from
    a generator of its own (see :meth:`ClientRuntime.release_statistics
    <drencoder.federated.runtime.ClientRuntime.release_statistics>`).
    """

    client: int
    data_seed: int
    train_seed: int


def stage1_tasks(num_clients: int, *, generator: torch.Generator) -> list[Stage1Task]:
    """Server side: one task per client, seeds drawn from ``generator`` in client order."""
    return [
        Stage1Task(client=c, data_seed=draw_seed(generator), train_seed=draw_seed(generator))
        for c in range(num_clients)
    ]


def warmup_steps(config: RunConfig) -> int:
    s1 = config.stage1
    return s1.warmup_steps if s1.warmup_steps is not None else config.local.steps


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
    given. See :func:`run_stage1` for the report's keys.
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


def run_stage1(
    model,
    global_state: dict[str, torch.Tensor],
    workload: Workload,
    config: RunConfig,
    *,
    layout: Layout,
    generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
    progress: bool = True,
) -> Stage1Result:
    """Run stage 1 in one process: every client's release, then the auto-encoder.

    The composition of :func:`stage1_tasks` (seeds from ``generator``),
    :func:`release_client_statistics` for every client (release noise from
    ``noise_generator``, default ``generator``) and :func:`train_codec` (``generator``).
    ``model`` carries the LoRA adapter (``attach_lora``); it is left at ``global_state``.
    ``layout`` is the uplink layout (``adapter_layout(model, sent=config.lora.sent)``).

    ``report`` keys: ``clients``, ``epochs``, ``warmup_steps``, ``batch_size``,
    ``release`` (settings and ``noise_std``), ``pooling``, ``statistics_norms`` and
    ``clipped_clients`` (unreleased, simulator diagnostic), ``autoencoder`` (name,
    dimensions, architecture settings), ``training`` (``TrainReport.to_dict()`` without
    its time), ``prior_check`` (relative error and cosine on fresh prior samples),
    ``training_seconds`` and ``seconds`` (the whole stage). Every key but the two times is
    a deterministic function of (config, generator states).
    """
    from tqdm.auto import tqdm

    if not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a RunConfig, got {type(config).__name__}")
    if config.codec.architecture is Architecture.CONV:
        conv_stages_for(config.codec.compression_ratio)  # fail before the warm-up, not after
    start = time.perf_counter()
    noise = generator if noise_generator is None else noise_generator
    released, norms = [], []
    tasks = stage1_tasks(len(workload.clients), generator=generator)
    for task in tqdm(tasks, desc="stage 1 warm-up", unit="client", disable=not progress):
        stats, norm = release_client_statistics(
            model, global_state, workload, task, config, layout=layout, noise_generator=noise
        )
        released.append(stats)
        norms.append(norm)
    result = train_codec(
        released,
        config,
        generator=generator,
        device=_model_device(model),
        statistics_norms=norms,
        progress=progress,
    )
    result.report["seconds"] = time.perf_counter() - start
    return result
