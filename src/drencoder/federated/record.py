"""Record-level DP (``privacy.unit = record``): what a round asks of each client and what
it costs each client's records.

Each participating client runs ``steps`` DP-SGD steps over its own n_i examples
(:mod:`drencoder.lora.dp_sgd`): Poisson-sampled batches at rate q_i = min(1, b / n_i)
(b = ``data.batch_size``, the expected batch), per-example clipping at C, Gaussian noise
σC per step. Its round therefore costs its records

    ``SelfComposed(PoissonSampled(q_i, Gaussian(σ)), steps)``

under add-remove of one example (:mod:`drencoder.accounting.relation`), charged to that
client alone: clients with fewer examples have a larger q_i and pay more per step. A
client's ledger composes the rounds it took part in; ε of the run is the worst client's.
Participation in a round is not a privacy event at this level and gives no further
amplification (none is claimed). The update a client sends is post-processing of its
DP-SGD run: it is encoded, not clipped or noised again.

Record groups (``privacy.record_group`` = m > 1, micro-batch clipping): the client's
examples form fixed groups of m consecutive examples; a step samples whole groups at rate
q_i, and each sampled group's summed gradient is clipped to C. Replacing one example
changes only its group's clipped vector (from x to y, both of norm at most C), and the
group is sampled with the same probability either way: the step is
``PoissonSampled(q_i, Gaussian(σ))`` under replace-one of one example, which the PLD
accountant analyses (RDP has no subsampled replace-one analysis). Add-remove is not
claimed: removing an example would regroup the examples after it.

Calibration plans for the worst client: the one with the fewest examples (largest q),
taking part in every round, for ``rounds × steps`` steps (plus the stage-1 charge of
DR-Encoder). Budget stop per client: before a round, a sampled client whose charge would
take its ε past the target does not take part; the run stops when no client could.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting import dp_event

from drencoder import accounting
from drencoder.errors import ConfigError
from drencoder.mechanisms import RecordSpace, check_clip_norm, check_noise_multiplier

_KEYS = {
    "clip_norm": (int, float),
    "noise_multiplier": (int, float),
    "batch_size": (int,),
    "steps": (int,),
    "space": (str,),
    "group": (int,),
}


def sample_rate(*, batch_size: int, examples: int) -> float:
    """q = min(1, b / n): each example enters a step's batch with this probability."""
    if examples < 1:
        raise ConfigError(f"a client needs at least one example for DP-SGD, got {examples}")
    return min(1.0, batch_size / examples)


@dataclass(frozen=True, kw_only=True)
class RecordDpSgd:
    """The DP-SGD every participant of a round runs (the server describes it; each client
    derives its own q from its example count)."""

    clip_norm: float
    noise_multiplier: float
    batch_size: int
    steps: int
    space: str = RecordSpace.LORA.value
    group: int = 1
    """Examples per clipped group (1: per-example clipping); see module doc."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_norm", check_clip_norm(self.clip_norm))
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "space", RecordSpace(self.space).value)
        for name in ("batch_size", "steps", "group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"record DP-SGD {name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_config(cls, config, noise_multiplier: float) -> RecordDpSgd:
        return cls(
            clip_norm=config.privacy.clip_norm,
            noise_multiplier=noise_multiplier,
            batch_size=config.data.batch_size,
            steps=config.local.steps,
            space=config.privacy.record_space.value,
            group=config.privacy.record_group,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _KEYS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordDpSgd:
        """Strict: exactly the keys of :meth:`to_json`, each of its type."""
        if not isinstance(data, Mapping) or set(data) != set(_KEYS):
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(
                f"a record DP-SGD description needs exactly the keys {sorted(_KEYS)}, got "
                f"{got}: server and client must run the same drencoder version"
            )
        for key, types in _KEYS.items():
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise ConfigError(f"record DP-SGD key {key!r} has the wrong type: {value!r}")
        return cls(**dict(data))

    def sample_rate(self, examples: int) -> float:
        return sample_rate(batch_size=self.batch_size, examples=examples)

    @property
    def relation(self) -> accounting.Relation:
        """What one step's event is stated under: add-remove of one example, or replace-one
        with record groups (module doc)."""
        return accounting.record_relation(self.group)

    def event(self, examples: int) -> dp_event.DpEvent:
        """What one round costs a client holding ``examples`` examples."""
        return round_event(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate(examples),
            steps=self.steps,
        )

    def label(self, t: int, examples: int) -> str:
        q = self.sample_rate(examples)
        unit = "per example" if self.group == 1 else f"per group of {self.group} examples"
        return (
            f"round {t}: record-level DP-SGD, {self.steps} steps at q={q:g}"
            f" ({self.batch_size}/{examples} examples), C={self.clip_norm:g} {unit}, "
            f"sigma={self.noise_multiplier:g}, clipped and noised in the {self.space} space, "
            f"{self.relation.value} of one example"
        )


def round_event(*, noise_multiplier: float, sample_rate: float, steps: int) -> dp_event.DpEvent:
    """``steps`` DP-SGD steps: ``PoissonSampled(q, Gaussian(σ))`` each (``Gaussian(σ)`` at
    q = 1; ``NonPrivate`` at σ = 0)."""
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    step = accounting.gaussian_round(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accounting.repeated(step, steps)


def round_charges(
    record: RecordDpSgd, participants: Sequence[int], examples: Sequence[int]
) -> list[tuple[dp_event.DpEvent, list[int]]]:
    """One ``(event, clients)`` charge per distinct example count among ``participants``
    (``examples[c]`` is client c's count): each client pays for its own q."""
    by_count: dict[int, list[int]] = defaultdict(list)
    for c in participants:
        by_count[int(examples[c])].append(int(c))
    return [(record.event(n), clients) for n, clients in sorted(by_count.items())]


def planned_event(
    noise_multiplier: float,
    config,
    examples: Sequence[int],
    stats_event: dp_event.DpEvent | None,
) -> dp_event.DpEvent:
    """The worst client's whole-run event: the fewest examples, every round."""
    record = RecordDpSgd.from_config(config, noise_multiplier)
    per_round = record.event(min(examples))
    if isinstance(per_round, dp_event.SelfComposedDpEvent):
        rounds = dp_accounting.SelfComposedDpEvent(per_round.event, per_round.count * config.rounds)
    else:
        rounds = accounting.repeated(per_round, config.rounds)
    if stats_event is None:
        return rounds
    return dp_accounting.ComposedDpEvent([stats_event, rounds])


def per_client_epsilon(
    ledger: accounting.PrivacyLedger, clients: int, accountant: str
) -> list[float | None]:
    """ε of each client's own ledger entries (and the charges to every client), or None for
    an accountant with no analysis under the ledger's relation."""
    out: list[float | None] = []
    common = [e for e in ledger.entries if e.clients is None]
    for c in range(clients):
        own = [e for e in ledger.entries if e.clients is not None and c in e.clients]
        sub = accounting.PrivacyLedger(
            delta=ledger.delta, relation=ledger.relation, entries=[*common, *own]
        )
        try:
            eps = sub.epsilon(accountant)
        except accounting.UnsupportedRelation:
            eps = None
        out.append(None if eps is None or not math.isfinite(eps) else eps)
    return out
