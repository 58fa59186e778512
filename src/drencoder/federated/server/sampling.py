"""Which clients take part in a round (docs/design.md §2, stage 2 step 1).

``poisson``: each client joins independently with probability q (the case the
amplification analyses assume); a round may have no participant, and then the global
adapter is unchanged. ``fixed``: exactly K clients drawn without replacement; no
amplification is claimed for it. Both draw from an explicit generator only.
"""

from __future__ import annotations

import torch

from drencoder.errors import ConfigError
from drencoder.mechanisms.options import Sampling


def sample_clients(
    *,
    num_clients: int,
    scheme: Sampling | str,
    rate: float,
    per_round: int,
    generator: torch.Generator,
) -> list[int]:
    """Sorted ids of the clients that take part in one round."""
    scheme = Sampling(scheme)
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    if scheme is Sampling.POISSON:
        if not 0 < rate <= 1:
            raise ConfigError(f"sampling rate must be in (0, 1], got {rate!r}")
        if rate == 1:
            return list(range(num_clients))
        draws = torch.rand(num_clients, generator=generator, dtype=torch.float64)
        return [i for i in range(num_clients) if draws[i] < rate]
    if not 1 <= per_round <= num_clients:
        raise ConfigError(f"per_round must be in [1, {num_clients}], got {per_round}")
    chosen = torch.randperm(num_clients, generator=generator)[:per_round]
    return sorted(int(i) for i in chosen)
