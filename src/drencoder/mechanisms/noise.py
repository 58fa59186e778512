"""The one function that draws differential-privacy noise (one place to audit).

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

**Seeding** (:func:`noise_generator`). Every generator that a DP guarantee rests on (the
noise of each round, local or central, the stage-1 release noise, and Poisson
participation) is seeded by default with 63 bits from the operating system's entropy source
(:func:`secrets.randbits`, i.e. ``os.urandom``), used once and never stored or sent: nobody,
not even someone holding the run's config, can regenerate the noise and subtract it. The
generator *state* is checkpointed so that a resumed run continues the same stream; it is
secret run state (protect checkpoints like the data), not derivable from the config.
Seeding from the run's ``seed`` (``privacy.reproducible_noise = true``) is a research
opt-in: the run can be repeated exactly, and anyone who knows the seed can subtract the
noise, so the printed epsilon does not hold against them. OS entropy removes seed
guessing, not every attack: Mersenne Twister's output is predictable from enough observed
outputs, and the floating-point issue above (Mironov 2012, "On significance of the least
significant bits for differential privacy") remains. In the simulator every client's local
noise comes from one generator held by the simulated server; in a deployment each client
draws its local noise on its own device from OS entropy.
"""

from __future__ import annotations

import math
import secrets
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


def noise_generator(seed: int | None = None) -> torch.Generator:
    """A CPU ``torch.Generator`` for DP noise.

    ``seed=None`` (what every DP stream uses by default): seeded with 63 bits of
    operating-system entropy, never stored. An integer ``seed`` gives a reproducible stream,
    which anyone who knows the seed can regenerate (see the module docstring).
    """
    if seed is None:
        return torch.Generator().manual_seed(secrets.randbits(63))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 or None (OS entropy), got seed={seed!r}")
    return torch.Generator().manual_seed(seed)


def reseed_from_entropy(generator: torch.Generator) -> None:
    """Reseed ``generator`` in place with 63 fresh bits of OS entropy (never stored).

    Used when a resumed run re-runs a round whose tasks were already sent: replaying the
    checkpointed noise over a different set of replies would reveal their difference.
    """
    generator.manual_seed(secrets.randbits(63))
