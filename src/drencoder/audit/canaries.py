"""Canary clients of a one-run privacy audit: their directions, their coins, their scores.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846), with *gradient canaries in the sent space*: canary j owns a fixed random
unit vector u_j of the space the mechanism clips (the latent for ``clip_point = latent``,
the LoRA update for the identity codec), drawn from a seed the auditor knows. Each canary
flips a fair coin S_j that no party sees. When it takes part in a round it skips training
and enters the clip → noise → aggregate path of a real client
(:func:`~drencoder.federated.client.update.privatize`) with the vector

- ``+C·u_j`` if S_j = in, and ``−C·u_j`` if S_j = out, under the **replace-one** relation
  (two data sets of one client, ``2C`` apart: the sensitivity the accountant charges);
- ``+C·u_j`` if S_j = in, and nothing at all (the client does not exist) if out, under
  **add-remove**.

Either way, flipping one coin is a change between neighbouring inputs of the relation the
run's ε is stated under, so an (ε, δ)-DP run bounds how well any party can guess the
coins (:mod:`drencoder.accounting.audit`).

The auditor scores canary j by how far what its party saw points along u_j
(:class:`CanaryScores`); the scores are linear in what was seen, so an auditor who can
regenerate the noise subtracts the scores of a replay that carried the noise alone.

This module depends on torch and numpy only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator

import numpy as np
import torch

from drencoder.errors import ConfigError

# Directions are kept in memory when they fit in this many bytes; otherwise each is
# regenerated from its seed when needed (an identity-codec audit of a real model).
CACHE_BYTES = 256 * 2**20


def _seed(seed: int, j: int) -> int:
    digest = hashlib.sha256(f"drencoder/audit/{seed}/canary/{j}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def draw_coins(count: int, *, seed: int | None = None) -> np.ndarray:
    """``count`` fair coins (True = in), independent of everything else in the run.

    ``seed=None`` (the default of an audit): from OS entropy, so no party of the run (not
    even one who knows the run's seed) can know them. A seed makes a test deterministic.
    """
    rng = np.random.default_rng(secrets.randbits(63) if seed is None else seed)
    return rng.random(count) < 0.5


class CanarySet:
    """``count`` canary clients with ids ``first_id, first_id + 1, …``.

    ``dim`` is the clipped space's dimension; ``seed`` the directions' seed (known to the
    auditor); ``included`` the coins (known only to the harness that counts correct
    guesses).
    """

    def __init__(self, *, count: int, dim: int, first_id: int, seed: int, included) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ConfigError(
                f"canaries must be an integer >= 2, got canaries={count!r}; an audit needs "
                "hundreds to give a useful bound (e.g. 1000)"
            )
        included = np.asarray(included, dtype=bool)
        if included.shape != (count,):
            raise ConfigError(
                f"included must hold one coin per canary ({count}), got shape {included.shape}"
            )
        self.count = count
        self.dim = int(dim)
        self.first_id = int(first_id)
        self.seed = int(seed)
        self.included = included
        self._cache: torch.Tensor | None = None
        if count * self.dim * 4 <= CACHE_BYTES:
            self._cache = torch.stack([self._draw(j) for j in range(count)])

    def _draw(self, j: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_seed(self.seed, j))
        u = torch.randn(self.dim, generator=g, dtype=torch.float32)
        return u / float(u.double().norm())

    def direction(self, j: int) -> torch.Tensor:
        """u_j, a float32 unit vector of the clipped space."""
        return self._cache[j] if self._cache is not None else self._draw(j)

    def directions(self) -> Iterator[tuple[int, torch.Tensor]]:
        for j in range(self.count):
            yield j, self.direction(j)

    def is_canary(self, client: int) -> bool:
        return self.first_id <= client < self.first_id + self.count

    def index(self, client: int) -> int:
        return client - self.first_id


class CanaryScores:
    """What one party saw, reduced to one score per canary (higher = guessed in).

    - :meth:`see_message`: the party sees canary j's own message (the server under
      ``local`` placement, which knows who sent what): score_j += ⟨u_j, message⟩;
    - :meth:`see_release`: the party sees each round's released aggregate (``central``
      placement): the releases are summed and, at the end, score_j = ⟨u_j, Σ releases⟩.
    """

    def __init__(self, canaries: CanarySet) -> None:
        self.canaries = canaries
        self._scores = np.zeros(canaries.count, dtype=np.float64)
        self._released: torch.Tensor | None = None

    def see_message(self, j: int, message: torch.Tensor, *, direction=None) -> None:
        """``direction``: u_j when the caller holds it already (saves regenerating it)."""
        u = self.canaries.direction(j) if direction is None else direction
        self._scores[j] += float(torch.dot(u.double(), message.detach().cpu().double()))

    def see_release(self, released: torch.Tensor) -> None:
        r = released.detach().cpu().double()
        self._released = r if self._released is None else self._released + r

    def scores(self) -> np.ndarray:
        out = self._scores.copy()
        if self._released is not None:
            r = self._released
            for j, u in self.canaries.directions():
                out[j] += float(torch.dot(u.double(), r))
        return out
