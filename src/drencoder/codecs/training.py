"""Training a random-prior auto-encoder on synthetic samples only (DR-Encoder stage 1).

:func:`train_autoencoder` takes its data from a :class:`~drencoder.prior.PriorSampler` and
from nothing else: the argument is type-checked, so real client updates cannot reach the
encoder's training by accident (encoder leakage: an encoder trained on real updates can
memorise them; docs/codecs.md). Every batch is a fresh draw from the sampler, with the
caller's generator.

Objective and optimiser: MSE (in the codec's normalised space) and Adam with lr 2e-4, the
predecessor's values (CG-FedLLM, arXiv:2405.13746), which states neither steps nor
batch size. Ours default to 200 steps of ``codec.default_samples_per_step()`` samples (at least 256
chunk rows for the MLP: two SmolLM2-sized samples, 450 chunks of 4096, per step). At
d = 921,600 that took 10 s on 2 idle CPU threads (20 s on a loaded machine) and brought the
loss to within 0.1 % of the linear optimum on the prior (``benchmarks/codec_speed.py``
measures it). That optimum
is modest: on i.i.d. Gaussian inputs there is little structure to learn, and an optimal
linear auto-encoder of a standardised chunk keeps only a fraction k_c/c (1/64) of its
energy. docs/codecs.md measures, rather than assumes, what it does on real updates.

Deterministic: the samples come from ``generator``, weight init from a seed drawn by the
codec's constructor, and the order of operations is fixed; the global RNG is not used.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from drencoder.codecs.autoencoder import AutoencoderCodec
from drencoder.errors import ConfigError
from drencoder.prior.sampler import PriorSampler

DEFAULT_STEPS = 200
DEFAULT_LR = 2e-4


@dataclass
class TrainReport:
    """What a training run did; JSON-ready via :meth:`to_dict`."""

    steps: int
    samples_per_step: int
    lr: float
    initial_loss: float
    final_loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def train_autoencoder(
    codec: AutoencoderCodec,
    sampler: PriorSampler,
    *,
    generator: torch.Generator,
    steps: int = DEFAULT_STEPS,
    samples_per_step: int | None = None,
    lr: float = DEFAULT_LR,
    progress: bool = True,
    log_every: int = 10,
) -> TrainReport:
    """Train ``codec`` in place on prior samples drawn from ``sampler``; return a report.

    ``losses`` holds the mean training loss over each window of ``log_every`` steps;
    ``initial_loss`` and ``final_loss`` are the first and last of them.
    """
    if not isinstance(sampler, PriorSampler):
        raise ConfigError(
            f"train_autoencoder takes its data only from a PriorSampler (synthetic prior "
            f"samples), got {type(sampler).__name__}; real updates must never train the codec"
        )
    if not isinstance(codec, AutoencoderCodec):
        raise ConfigError(
            f"train_autoencoder trains an AutoencoderCodec, got {type(codec).__name__}"
        )
    if sampler.layout != codec.layout:
        raise ConfigError("the sampler's layout does not match the codec's layout")
    for name, value in (("steps", steps), ("log_every", log_every)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {name}={value!r}")
    if samples_per_step is None:
        samples_per_step = codec.default_samples_per_step()
    if int(samples_per_step) != samples_per_step or samples_per_step < 1:
        raise ConfigError(f"samples_per_step must be a positive integer, got {samples_per_step!r}")
    if not 0 < float(lr) < float("inf"):
        raise ConfigError(f"lr must be finite and > 0, got lr={lr!r}")

    network = codec.network
    optimizer = torch.optim.Adam(network.parameters(), lr=float(lr))
    network.train()
    losses, window = [], []
    start = time.perf_counter()
    try:
        bar = tqdm(range(int(steps)), desc=f"train {codec.name}", disable=not progress)
        for _ in bar:
            batch = sampler.sample(int(samples_per_step), generator=generator).to(codec.device)
            loss = codec.training_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window.append(float(loss.detach()))
            if len(window) == log_every:
                losses.append(sum(window) / len(window))
                window = []
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if window:
            losses.append(sum(window) / len(window))
    finally:
        network.eval()
    return TrainReport(
        steps=int(steps),
        samples_per_step=int(samples_per_step),
        lr=float(lr),
        initial_loss=losses[0],
        final_loss=losses[-1],
        seconds=time.perf_counter() - start,
        losses=losses,
    )
