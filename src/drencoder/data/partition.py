"""Splitting a data set across federated clients.

Every partitioner takes one key per item (a label or a subject: see ``item_keys``),
returns one sorted list of item indices per client, and guarantees the lists are
disjoint, cover every index, and are non-empty. Randomness comes only from the explicit
``rng`` (a ``numpy.random.Generator``, which is advanced, or an integer seed); the same
seed gives the same partition on every machine. Distinct keys are sorted before any draw,
so the result does not depend on the order in which keys first appear.

* ``iid`` — a random permutation cut into ``num_clients`` near-equal parts (sizes differ
  by at most one).
* ``dirichlet`` — label/subject skew as in Hsu, Qi & Brown (2019) and NIID-Bench (Li et
  al., 2022): for each key, shares ``p ~ Dir(alpha · 1)`` over clients and that key's
  shuffled items cut by the cumulative shares. Small ``alpha`` gives each client few keys;
  large ``alpha`` approaches iid. If a client ends up with fewer than ``min_size`` items
  the whole draw is repeated (as NIID-Bench does), at most ``max_tries`` times, then a
  ``ConfigError`` says which values to change. Nothing is moved by hand afterwards, so the
  result is a genuine Dirichlet draw conditioned on non-emptiness.
* ``by_subject`` — whole keys per client: the distinct keys in a random order, dealt
  round-robin, so each client holds ``len(keys) // num_clients`` or one more keys. Client
  sizes then follow the subject sizes (uneven, as real data owners are).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from enum import StrEnum

import numpy as np

from drencoder.data.items import MCItem, parse_enum
from drencoder.errors import ConfigError


class Partitioning(StrEnum):
    """Partition scheme names as they appear in configs."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    BY_SUBJECT = "by_subject"


class PartitionKey(StrEnum):
    """Which item attribute the non-iid schemes group by."""

    LABEL = "label"
    SUBJECT = "subject"


def item_keys(items: Sequence[MCItem], *, by: PartitionKey | str) -> list[Hashable]:
    """One key per item: its answer index (``label``) or its ``subject``."""
    by = parse_enum(PartitionKey, by, name="by")
    return [it.answer if by is PartitionKey.LABEL else it.subject for it in items]


def as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    """An explicit generator; an int seeds a fresh PCG64 (``numpy.random.default_rng``)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ConfigError(f"rng must be a numpy.random.Generator or an int seed, got {rng!r}")


def _check_clients(num_clients: int, n_items: int, what: str = "items") -> None:
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ConfigError(f"num_clients must be an integer >= 1, got num_clients={num_clients!r}")
    if n_items < num_clients:
        raise ConfigError(
            f"cannot give each of num_clients={num_clients} clients at least one of "
            f"{n_items} {what}; use at most {n_items} clients"
        )


def _key_groups(keys: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    try:
        ordered = sorted(groups)
    except TypeError:
        ordered = sorted(groups, key=repr)
    return {k: np.asarray(groups[k], dtype=np.int64) for k in ordered}


def iid_partition(
    n_items: int, *, num_clients: int, rng: np.random.Generator | int
) -> list[list[int]]:
    """A random permutation of ``range(n_items)`` cut into near-equal parts."""
    _check_clients(num_clients, n_items)
    perm = as_generator(rng).permutation(n_items)
    return [sorted(part.tolist()) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(
    keys: Sequence[Hashable],
    *,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator | int,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[list[int]]:
    """Per-key Dirichlet(``alpha``) shares over clients (see the module docstring)."""
    if not np.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a finite number > 0, got alpha={alpha!r}")
    if min_size < 1 or max_tries < 1:
        raise ConfigError(
            f"min_size and max_tries must be >= 1, got min_size={min_size}, max_tries={max_tries}"
        )
    _check_clients(num_clients, len(keys))
    if num_clients * min_size > len(keys):
        raise ConfigError(
            f"num_clients={num_clients} clients of at least min_size={min_size} items need "
            f"{num_clients * min_size} items, got {len(keys)}"
        )
    gen = as_generator(rng)
    groups = _key_groups(keys)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for idx in groups.values():
            shares = gen.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(gen.permutation(idx), cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise ConfigError(
        f"no Dirichlet draw in max_tries={max_tries} gave every one of num_clients={num_clients} "
        f"clients at least min_size={min_size} items (alpha={alpha}, {len(keys)} items, "
        f"{len(groups)} distinct keys); raise alpha, lower num_clients or raise max_tries"
    )


def subject_partition(
    keys: Sequence[Hashable], *, num_clients: int, rng: np.random.Generator | int
) -> list[list[int]]:
    """Whole keys (subjects) per client, dealt round-robin from a random order."""
    groups = _key_groups(keys)
    _check_clients(num_clients, len(groups), what="distinct subjects")
    order = as_generator(rng).permutation(len(groups))
    idx_lists = list(groups.values())
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for rank, g in enumerate(order):
        parts[rank % num_clients].extend(idx_lists[g].tolist())
    return [sorted(p) for p in parts]


def partition(
    keys: Sequence[Hashable],
    *,
    scheme: Partitioning | str,
    num_clients: int,
    rng: np.random.Generator | int,
    alpha: float | None = None,
) -> list[list[int]]:
    """Dispatch by scheme name. ``alpha`` is required by ``dirichlet`` and not used by the
    other schemes (so a config may always carry it)."""
    scheme = parse_enum(Partitioning, scheme, name="scheme")
    if scheme is Partitioning.DIRICHLET:
        if alpha is None:
            raise ConfigError("the dirichlet partition needs alpha > 0, got alpha=None")
        return dirichlet_partition(keys, num_clients=num_clients, alpha=alpha, rng=rng)
    if scheme is Partitioning.IID:
        return iid_partition(len(keys), num_clients=num_clients, rng=rng)
    return subject_partition(keys, num_clients=num_clients, rng=rng)


def key_skew(parts: Sequence[Sequence[int]], keys: Sequence[Hashable]) -> float:
    """Mean over clients of the total-variation distance between the client's key
    distribution and the global one: 0 for identical mixes, towards 1 for disjoint keys."""
    groups = _key_groups(keys)
    index = {k: j for j, k in enumerate(groups)}
    global_p = np.array([len(v) for v in groups.values()], dtype=float) / len(keys)
    tvs = []
    for part in parts:
        counts = np.zeros(len(groups))
        for i in part:
            counts[index[keys[i]]] += 1
        tvs.append(0.5 * np.abs(counts / max(len(part), 1) - global_p).sum())
    return float(np.mean(tvs))
