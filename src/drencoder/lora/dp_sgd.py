"""Record-level local training: DP-SGD over one client's own examples.

Each step (Abadi et al. 2016, as Opacus runs it with Poisson sampling):

1. the caller samples the step's batch, each of the client's n examples independently
   with probability q (:meth:`~drencoder.federated.workload.Workload.poisson_batches`,
   from the client's private generator); the batch can be empty;
2. the gradient of every example's own loss is computed
   (:func:`~drencoder.lora.per_example.per_example_gradients`) and clipped to L2 norm C;
3. the clipped gradients are summed and N(0, σ²C²·I) is added, drawn from the client's
   private generator (:func:`~drencoder.mechanisms.gaussian_noise`, the one place noise is
   drawn);
4. the noisy sum is divided by the expected batch size q·n (public, so the division is
   post-processing) and handed to the local optimizer as the gradient.

Each step is the Poisson-subsampled Gaussian mechanism ``PoissonSampled(q, Gaussian(σ))``
with respect to adding or removing one example; the optimizer, the model update and
everything computed from the noisy gradients afterwards are post-processing.

``space`` (``privacy.record_space = latent``): step 2 clips each example's *encoded*
gradient ``Enc(g_j)`` (dimension k) and step 3 noises their sum in the latent, which is then
decoded into the gradient step. The sensitivity argument is the same (each example moves
the sum by at most C in the latent) because the encoder is a fixed function that does
not depend on the data of this step; the decoder is post-processing. The noise then has k
coordinates instead of d, DR-Encoder's idea applied per example.

Record groups (``group`` = m > 1, micro-batch clipping): the batch's rows carry their
group (``batch["group"]``, fixed groups of m consecutive examples of the client, sampled
whole); step 2 sums each group's per-example gradients and clips the sum, step 3 noises
the sum of the clipped groups as before. The division by q·n still gives a mean per
example. The sensitivity argument is then replace-one of an example
(:mod:`drencoder.federated.record`).

``max_grad_norm`` of the local settings still applies, to the noisy gradient (stability
only; post-processing). Steps, learning rate and optimizer are the client's local
settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from drencoder.errors import ConfigError
from drencoder.lora._modes import training_mode
from drencoder.lora._rng import seeded
from drencoder.lora.adapter import trainable_parameters
from drencoder.lora.layout import Layout
from drencoder.lora.per_example import per_example_gradients
from drencoder.lora.training import TrainSettings, _prepare, make_optimizer
from drencoder.mechanisms import (
    check_clip_norm,
    check_noise_multiplier,
    clip_cosine,
    clip_l2,
    gaussian_noise,
)


class GradientSpace(Protocol):
    """Where per-example gradients are clipped and noised (a codec: encode ``[n, d] →
    [n, k]``, decode ``[k] → [d]``)."""

    latent_dim: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, kw_only=True)
class DpSgd:
    """DP-SGD's settings for one client: C, σ and its sampling rate q = b / n."""

    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    examples: int
    """n, the client's number of examples (q·n is the expected batch size)."""
    group: int = 1
    """Examples per clipped group (1: per-example clipping)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_norm", check_clip_norm(self.clip_norm))
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        q = self.sample_rate
        if isinstance(q, bool) or not (isinstance(q, int | float) and 0 < q <= 1):
            raise ConfigError(f"sample_rate must be in (0, 1], got sample_rate={q!r}")
        n = self.examples
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"examples must be an integer >= 1, got examples={n!r}")
        m = self.group
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(f"group must be an integer >= 1, got group={m!r}")

    @classmethod
    def for_client(
        cls,
        *,
        clip_norm: float,
        noise_multiplier: float,
        batch_size: int,
        examples: int,
        group: int = 1,
    ) -> DpSgd:
        """q = min(1, batch_size / examples): an expected batch of ``batch_size`` examples
        (each group of ``group`` examples is sampled at rate q)."""
        if examples < 1:
            raise ConfigError(f"a client needs at least one example, got {examples}")
        return cls(
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            sample_rate=min(1.0, batch_size / examples),
            examples=examples,
            group=group,
        )

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.examples


@dataclass
class DpSgdReport:
    """What a DP-SGD run did, for the simulation's diagnostics (never released)."""

    losses: list[float]
    batch_sizes: list[int]
    clipped_fraction: float
    """Share of per-example (or per-group) gradients whose norm exceeded C."""
    clip_cosine: float = math.nan
    """Mean over the steps of the cosine between the clipped and the unclipped sum of the
    step's per-example gradients (in the space they were clipped in): 1 when clipping kept
    the gradient's direction, below 0 when it turned it around."""


def noisy_gradient(
    per_example: torch.Tensor,
    dp: DpSgd,
    *,
    generator: torch.Generator,
    space: GradientSpace | None = None,
    dim: int | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, float]:
    """One DP-SGD gradient ``[d]`` from per-example gradients ``[b, d]`` (b may be 0), how
    many clipped vectors exceeded C, and the cosine between their clipped and unclipped sums
    (:func:`~drencoder.mechanisms.clip_cosine`; NaN for b = 0). With ``groups`` (``[b]``,
    each row's group) the rows of a group are summed first and the groups clipped. With
    ``space`` they are encoded, clipped and noised in its latent and the noisy sum decoded;
    ``dim`` is d when b = 0 without a space."""
    if groups is not None and per_example.shape[0]:
        _, inverse = torch.unique(groups, return_inverse=True)
        summed_rows = per_example.new_zeros((int(inverse.max()) + 1, per_example.shape[1]))
        per_example = summed_rows.index_add_(0, inverse.to(per_example.device), per_example)
    if space is not None:
        k = int(space.latent_dim)
        x = space.encode(per_example) if per_example.shape[0] else per_example[:, :0]
    else:
        x, k = per_example, per_example.shape[1] if dim is None else dim
    if x.shape[0]:
        clipped, norms = clip_l2(x, clip_norm=dp.clip_norm)
        summed = clipped.sum(0)
        n_clipped = int((norms > dp.clip_norm).sum())
        cosine = clip_cosine(x.sum(0), summed)
    else:
        summed, n_clipped, cosine = torch.zeros(k, dtype=torch.float32), 0, math.nan
    noisy = summed + gaussian_noise(
        summed, std=dp.noise_multiplier * dp.clip_norm, generator=generator
    )
    if space is not None:
        noisy = space.decode(noisy)
    return noisy / dp.expected_batch_size, n_clipped, cosine


def train_local_dp(
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor] | None],
    settings: TrainSettings,
    dp: DpSgd,
    *,
    layout: Layout,
    generator: torch.Generator,
    seed: int,
    space: GradientSpace | None = None,
) -> DpSgdReport:
    """Run one DP-SGD step per entry of ``batches`` (None: an empty Poisson batch, a step of
    noise alone). ``layout`` orders the trainable LoRA matrices (with ``space``, the
    codec's layout); ``generator`` is the client's private noise generator; ``seed`` seeds
    LoRA dropout as in :func:`~drencoder.lora.training.train_local`."""
    if not isinstance(settings, TrainSettings):
        raise ConfigError(f"settings must be a TrainSettings, got {type(settings).__name__}")
    params = trainable_parameters(model)
    if tuple(params) != layout.keys:
        raise ConfigError(
            "DP-SGD needs the layout of the trainable LoRA matrices, in order; got "
            f"{len(layout.keys)} blocks for {len(params)} trainable matrices"
        )
    if len(batches) != settings.steps:
        raise ConfigError(f"expected {settings.steps} batches (one per step), got {len(batches)}")
    device = next(iter(params.values())).device
    optimizer = make_optimizer(list(params.values()), settings)
    report = DpSgdReport(losses=[], batch_sizes=[], clipped_fraction=0.0)
    clipped = total = 0
    cosines: list[float] = []
    try:
        with training_mode(model, True), seeded(seed, model):
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                groups = None
                if batch is None:
                    per_example = torch.zeros((0, layout.dim), dtype=torch.float32)
                else:
                    per_example, loss = per_example_gradients(
                        model, _prepare(batch, device), layout=layout
                    )
                    report.losses.append(loss)
                    if dp.group > 1:
                        groups = batch["group"]
                grad, n_clipped, cosine = noisy_gradient(
                    per_example.cpu(),
                    dp,
                    generator=generator,
                    space=space,
                    dim=layout.dim,
                    groups=groups,
                )
                if not bool(torch.isfinite(grad).all()):
                    raise ConfigError("DP-SGD produced a non-finite gradient; lower the lr")
                for block in layout.blocks:
                    p = params[block.key]
                    p.grad = grad[block.slice].reshape(p.shape).to(p.device, p.dtype)
                if settings.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(list(params.values()), settings.max_grad_norm)
                optimizer.step()
                report.batch_sizes.append(per_example.shape[0])
                clipped += n_clipped
                total += per_example.shape[0] if groups is None else groups.unique().numel()
                if math.isfinite(cosine):
                    cosines.append(cosine)
    finally:
        optimizer.zero_grad(set_to_none=True)
    report.clipped_fraction = clipped / total if total else math.nan
    report.clip_cosine = sum(cosines) / len(cosines) if cosines else math.nan
    return report
