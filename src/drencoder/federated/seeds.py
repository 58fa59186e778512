"""Every seed and named random stream of a run, in one place.

A run's randomness comes from its ``seed`` through :func:`derive_seed` (a hash of the seed
and a stream's name), except the streams a DP guarantee rests on (:data:`DP_STREAMS`),
which come from the operating system's entropy unless ``privacy.reproducible_noise``.

- :func:`run_generators`: the server's named generators (:data:`GENERATORS`);
- :func:`named_generator`: a one-off generator for a named purpose (``"projection"``,
  ``"codec/<t>"``, ``"proxy/<t>"``, ``"lora"``, ...) that protects nothing;
- :func:`draw_seed`: a seed drawn from a generator, handed to a client for its batch order
  or training (clients draw their own privacy noise, never from these seeds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from drencoder.mechanisms import noise_generator, reseed_from_entropy


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the named stream, stable across machines and versions."""
    digest = hashlib.sha256(f"drencoder/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def named_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` ``(seed, name)`` (never for DP noise)."""
    return torch.Generator().manual_seed(derive_seed(seed, name))


def draw_seed(generator: torch.Generator) -> int:
    """A seed in [0, 2**62) drawn from ``generator`` (for ``train_local`` and friends)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


GENERATORS = ("sampling", "data", "train", "noise", "stage1")
DP_STREAMS = ("sampling", "noise")
"""The streams a DP guarantee rests on: Poisson participation (``sampling``) and every
Gaussian draw (``noise``: central noise; in a simulation also the clients' local noise and
their stage-1 release noise). Seeded from OS entropy unless ``privacy.reproducible_noise``.
``data``, ``train`` and ``stage1`` (batch order, training seeds, the auto-encoder's
initialisation and prior samples) protect nothing and stay reproducible from ``seed``."""


def run_generators(seed: int, *, reproducible_noise: bool) -> dict[str, torch.Generator]:
    """The run's named generators: :data:`DP_STREAMS` from OS entropy (or, research only,
    from ``seed``), the others from ``seed``."""
    return {
        name: noise_generator(
            derive_seed(seed, name) if reproducible_noise or name not in DP_STREAMS else None
        )
        for name in GENERATORS
    }


def reseed_dp_streams(generators: Mapping[str, torch.Generator]) -> None:
    """Fresh OS entropy for :data:`DP_STREAMS`, in place (a round re-run after a resume)."""
    for name in DP_STREAMS:
        reseed_from_entropy(generators[name])
