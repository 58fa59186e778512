"""The one function that draws differential-privacy noise (STYLE.md habit 5).

Every Gaussian sample that protects privacy in drencoder comes from :func:`gaussian_noise`,
always from an explicit ``torch.Generator`` and never from torch's global RNG. Why:

- **Reproducible and resumable bit for bit.** A run's noise depends only on the generator
  states it was handed, which a checkpoint can store (``generator.get_state()``); nothing
  else in the process (a model init, a data loader) can shift the stream.
- **Device independent.** Noise is drawn on the generator's device and then moved to the
  target's device, so a CPU generator yields the same noise whether the tensor lives on
  CPU or GPU.
- **Stream independent of σ.** The draw always happens, even for ``std == 0``; the number
  of values taken from the generator depends only on the shape, so runs that differ only in
  σ see the same randomness elsewhere.

Caveat, stated as Opacus states it for ``secure_mode=False``: torch's generators (Philox on
CUDA, Mersenne Twister on CPU) are **not** cryptographically secure, and floating-point
Gaussian samples are not the exact distribution the proofs assume (Mironov 2012 shows the
attack on the Laplace analogue). That is acceptable for research and simulation; a
deployment that must resist an adversary who sees the raw noisy values should substitute a
CSPRNG-backed, discretised sampler here, the one place it would have to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from drencoder.errors import ConfigError


def gaussian_noise(
    shape_or_like: torch.Tensor | torch.Size | Sequence[int],
    *,
    std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return float32 noise with i.i.d. N(0, std²) entries.

    ``shape_or_like`` is a shape, or a tensor whose shape and device the noise takes. The
    values are drawn on ``generator.device`` (see the module docstring for why).
    """
    if not isinstance(generator, torch.Generator):
        raise ConfigError(
            f"generator must be a torch.Generator (no global RNG is used), "
            f"got {type(generator).__name__}"
        )
    std = float(std)
    if not math.isfinite(std) or std < 0:
        raise ConfigError(f"noise std must be finite and >= 0, got std={std}")
    if isinstance(shape_or_like, torch.Tensor):
        shape, device = shape_or_like.shape, shape_or_like.device
    else:
        shape, device = torch.Size(shape_or_like), generator.device
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    noise.mul_(std)
    return noise.to(device)
