"""The run directory's record formats, declared once: the rows of ``metrics.jsonl`` and
``summary.json``.

Rows and the summary stay plain JSON objects (they are written as JSON and read by other
tools), typed as :class:`~typing.TypedDict` so that a type checker sees every key a module
reads. Every row is checked against its type when it is appended and when a resumed run
reads ``metrics.jsonl`` back, and the summary when it is written (pydantic, strict: no
coercion, no unknown key), so a misspelt or mistyped field fails where it is made, not in
a plot or a report later.

Kinds of rows (``kind``): ``eval`` (one evaluation of the global adapter), ``round`` (one
federated round), ``stage1`` (DR-Encoder's statistics release and codec training, or the
energy basis's release), ``codec`` (a subspace codec built at the start), ``sketch`` (the
sketch basis's release). docs/running.md describes every field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict from Python 3.12

NOT_COVERED = "not_covered_by_epsilon"
"""The key under which a row or the summary keeps measurements of raw client data
(training loss, pre-clip update norm, codec reconstruction of the real update, unreleased
stage-1 norms). Only a simulation can compute them; no epsilon covers them."""

_STRICT = ConfigDict(extra="forbid", strict=True)


class RowError(ValueError):
    """A row or summary does not match its declared type."""


# -- metrics.jsonl -----------------------------------------------------------------------


@with_config(_STRICT)
class Diagnostics(TypedDict, total=False):
    """Means over a round's clients of what only a simulation can measure."""

    train_loss: float
    update_norm: float
    clipped_fraction: float
    """Record level: the share of per-example gradients DP-SGD clipped."""
    clip_cosine: float
    """Cosine between the clipped and the unclipped mean of what the mechanism clips (client
    level: the round's client updates; record level: each DP-SGD step's per-example
    gradients, averaged): 1 when clipping kept the direction, below 0 when it turned it
    around."""
    reconstruction: dict[str, float]


@with_config(_STRICT)
class AdaptiveClippingRow(TypedDict):
    update_noise_multiplier: float | None
    count_noise: float
    unclipped_fraction: float
    next_clip_norm: float


@with_config(_STRICT)
class EvalRow(TypedDict):
    """One evaluation of the global adapter on the fixed held-out questions."""

    kind: Literal["eval"]
    round: int
    accuracy: float
    heldout_loss: float
    questions: int
    correct: str
    """Per question, ``1`` = answered correctly (for the paired comparison with the base)."""
    task: str
    model: str
    adapter_hash: str
    method: str
    epsilon: float | None
    delta: float | None
    n_shot: int
    n_questions: int
    mean_logprob_correct: float
    per_subject: dict[str, float]
    per_subject_n: dict[str, int]
    relation: NotRequired[str]


@with_config(_STRICT)
class RoundRow(TypedDict):
    """One federated round, written when its aggregate has been applied."""

    kind: Literal["round"]
    round: int
    sampled: list[int]
    participants: list[int]
    failed: dict[str, str]
    rejected: dict[str, str]
    epsilon: dict[str, float | None] | None  # None: no analysis under the relation
    unit: NotRequired[str | None]  # absent in rows written before record-level DP
    relation: str | None
    noise_multiplier: float | None
    clip_norm: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    codec: NotRequired[dict[str, Any]]
    exhausted: NotRequired[list[int]]
    declared_record_epsilon: NotRequired[dict[str, float]]
    adaptive_clipping: NotRequired[AdaptiveClippingRow]
    not_covered_by_epsilon: NotRequired[Diagnostics]


@with_config(_STRICT)
class Stage1Row(TypedDict):
    """Stage 1: the clients' statistics release and, for the auto-encoder, its training on
    synthetic updates; for the energy basis, the latent split it gave."""

    kind: Literal["stage1"]
    round: int
    bytes_up: int
    failed: dict[str, str]
    basis: NotRequired[str]
    vectors: NotRequired[int]
    blocks_with_latent: NotRequired[int]
    bytes_down: NotRequired[int]
    clients: NotRequired[int]
    epochs: NotRequired[int]
    warmup_steps: NotRequired[int]
    batch_size: NotRequired[int]
    release: NotRequired[dict[str, Any]]
    pooling: NotRequired[str]
    autoencoder: NotRequired[dict[str, Any]]
    training: NotRequired[dict[str, Any]]
    training_seconds: NotRequired[float]
    prior_check: NotRequired[dict[str, Any]]
    seconds: NotRequired[float]
    not_covered_by_epsilon: NotRequired[dict[str, Any]]


@with_config(_STRICT)
class CodecRow(TypedDict):
    """A subspace codec built at the start of the run."""

    kind: Literal["codec"]
    round: int
    basis: str
    latent_dim: int
    learned_vectors: int
    vectors: int


@with_config(_STRICT)
class SketchRow(TypedDict):
    """The sketch basis's release (``codec.basis = sketch``)."""

    kind: Literal["sketch"]
    round: int
    clients: int
    bytes_up: int
    failed: dict[str, str]
    rejected: dict[str, str]
    release: dict[str, Any]
    width: int


MetricsRow = Annotated[
    EvalRow | RoundRow | Stage1Row | CodecRow | SketchRow, Field(discriminator="kind")
]
_ROW = TypeAdapter(MetricsRow)


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" + (
        f" ({exc.error_count()} errors)" if exc.error_count() > 1 else ""
    )


def check_row(row: Mapping[str, Any]) -> MetricsRow:
    """``row`` if it is a well-formed metrics row of its kind; :class:`RowError` naming
    the first bad field otherwise."""
    try:
        _ROW.validate_python(row)
    except ValidationError as exc:
        kind = row.get("kind") if isinstance(row, Mapping) else None
        raise RowError(f"a metrics row of kind {kind!r} is malformed: {_why(exc)}") from None
    return row  # type: ignore[return-value]  # validated: the same object, typed


def parse_metrics(lines: Iterable[str], *, source: object = "metrics.jsonl") -> list[MetricsRow]:
    """One checked row per JSON line; :class:`RowError` names the line (of ``source``)
    and the field of the first bad one."""
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(check_row(json.loads(line)))
        except (RowError, json.JSONDecodeError) as exc:
            raise RowError(f"{source}, line {number}: {exc}") from None
    return rows


def load_metrics(path: str | os.PathLike) -> list[MetricsRow]:
    """Every row of a run's ``metrics.jsonl``, each checked (:func:`parse_metrics`)."""
    return parse_metrics(Path(path).read_text().splitlines(), source=path)


def evals(rows: Iterable[MetricsRow]) -> list[EvalRow]:
    """The ``eval`` rows, in order."""
    return [r for r in rows if r["kind"] == "eval"]  # type: ignore[misc]


def rounds(rows: Iterable[MetricsRow]) -> list[RoundRow]:
    """The ``round`` rows, in order."""
    return [r for r in rows if r["kind"] == "round"]  # type: ignore[misc]


def stage1(rows: Iterable[MetricsRow]) -> Stage1Row | None:
    """The ``stage1`` row, if the run has one."""
    return next((r for r in rows if r["kind"] == "stage1"), None)  # type: ignore[return-value]


# -- summary.json ------------------------------------------------------------------------


@with_config(_STRICT)
class NoiseOnMean(TypedDict):
    expected_clients_per_round: float
    std_per_coordinate: float
    formula: str


@with_config(_STRICT)
class RecordPrivacy(TypedDict):
    """Record-level DP: the worst client's per-record ε and each client's own."""

    epsilon_worst_client: float | None
    epsilon_per_client: list[float | None]
    declared_epsilon_per_client: dict[str, float]
    declared_epsilon_worst_client: float | None
    accountant: str
    dp_sgd: dict[str, Any] | None
    sample_rate_per_client: list[float | None]
    space: str
    statement: str


@with_config(_STRICT)
class AdaptiveClippingSummary(TypedDict):
    target_quantile: float | None
    clip_lr: float
    count_noise: float
    update_noise_multiplier: float | None
    initial_clip_norm: float
    next_clip_norm: float
    note: str


@with_config(_STRICT)
class PrivacySummary(TypedDict):
    """What the run's ε is, under which relation, against whom; empty but for ``private``
    in a non-private run."""

    private: bool
    delta: NotRequired[float]
    epsilon: NotRequired[dict[str, float | None] | None]
    relation: NotRequired[str]
    relation_warning: NotRequired[str | None]
    holds_against: NotRequired[str]
    noise_seed: NotRequired[str]
    reproducible_noise: NotRequired[bool]
    not_covered: NotRequired[list[str]]
    noise_multiplier: NotRequired[float | None]
    sigma_source: NotRequired[str]
    clip_norm: NotRequired[float]
    placement: NotRequired[str | None]
    clip_point: NotRequired[str | None]
    aggregation: NotRequired[str]
    sampling: NotRequired[str]
    noise_on_mean: NotRequired[NoiseOnMean | None]
    target_epsilon: NotRequired[float | None]
    accountant: NotRequired[str]
    charges: NotRequired[dict[str, int]]
    participation: NotRequired[dict[str, int]]
    gdp_clt: NotRequired[bool]
    unit: NotRequired[str]
    record: NotRequired[RecordPrivacy]
    adaptive_clipping: NotRequired[AdaptiveClippingSummary]
    statistics: NotRequired[str]


@with_config(_STRICT)
class UtilitySummary(TypedDict):
    """The final model against the base model on the same held-out questions."""

    questions: int
    base_accuracy: float
    final_accuracy: float
    difference: float
    standard_error: float
    better_than_base: bool
    statement: str


@with_config(_STRICT)
class CommunicationSummary(TypedDict):
    codec: str
    latent_dim: int
    bytes_per_upload: int
    full_dim: int
    full_bytes: int
    total_up: int
    total_down: int


@with_config(_STRICT)
class NotCoveredSummary(TypedDict):
    note: str
    examples_per_client: list[int] | None
    reconstruction: NotRequired[dict[str, float]]


RunInfo = with_config(_STRICT)(
    TypedDict(
        "RunInfo",
        {
            "drencoder": str,
            "torch": str,
            "python": str,
            "seconds in rounds": float,
            "one-time work": dict[str, Any],
        },
    )
)


Summary = with_config(_STRICT)(
    TypedDict(
        "Summary",
        {
            "method": str,
            "model": str,
            "task": str,
            "clients": int,
            "seed": int,
            "rounds_planned": int,
            "rounds_done": int,
            "stop_reason": str,
            "privacy": PrivacySummary,
            "utility": UtilitySummary | None,
            "communication": CommunicationSummary,
            NOT_COVERED: NotCoveredSummary,
            "run": RunInfo,
        },
    )
)
"""``summary.json``."""

_SUMMARY = TypeAdapter(Summary)


def check_summary(summary: Mapping[str, Any]) -> Summary:
    """``summary`` if it is a well-formed ``summary.json``; :class:`RowError` otherwise."""
    try:
        _SUMMARY.validate_python(summary)
    except ValidationError as exc:
        raise RowError(f"the run summary is malformed: {_why(exc)}") from None
    return summary  # type: ignore[return-value]
