"""What travels between the server and its clients, whatever carries it (the simulator or
Flower): the tasks the server sends, the replies it gets back, the round plan, the
client-pool interface and the failure codes.

This module is shared by both sides: :mod:`drencoder.federated.server` and
:mod:`drencoder.federated.client` import it and never each other (``tests/test_layout.py``).
:class:`~drencoder.federated.server.orchestration.FederatedServer` plans rounds and hands them to a
:class:`ClientPool`: the in-process simulator or Flower SuperNodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from drencoder.codecs import Codec
from drencoder.config import RunConfig
from drencoder.errors import DrencoderError
from drencoder.federated.record import RecordDpSgd
from drencoder.mechanisms import GaussianMechanism
from drencoder.prior import ClientStatistics, StatisticsRelease


@dataclass(frozen=True)
class ClientTask:
    """What the server asks of one client in one round (besides adapter and encoder)."""

    round: int
    client: int
    data_seed: int
    train_seed: int


@dataclass
class ClientResult:
    """A client's reply to a :class:`ClientTask`."""

    client: int
    message: torch.Tensor
    """The privatised latent ``[latent_dim]`` float32: clipped and, with ``local``
    placement, noised on the client."""
    clip_bit: float | None = None
    """Adaptive clipping: ``1[‖x‖ ≤ C]`` for what was clipped, uploaded with the message
    (None when the round does not ask for it)."""
    declared_epsilon: float | None = None
    """Record-level DP over Flower: the per-record ε the client declares its own ledger
    stands at after the round (reported by the server, not charged from it)."""
    diagnostics: dict = field(default_factory=dict)
    """Simulation-only measurements of raw data (``train_loss``, ``update_norm``,
    ``clipped_fraction``, ``clip_cosine``, ``reconstruction``, and ``clip_input``: the
    vector the mechanism clips with its clip scale, from which the simulator computes the
    round's ``clip_cosine``): not covered by epsilon, never uploaded by a real client."""


@dataclass(frozen=True)
class Stage1Task:
    """What the server sends one client for its stage-1 warm-up (besides the adapter).

    The seeds fix the client's batch order and training randomness; they come from the
    server's ``stage1`` generator. The release noise does *not*: the client draws it from
    a generator of its own (see :meth:`ClientRuntime.release_statistics
    <drencoder.federated.client.runtime.ClientRuntime.release_statistics>`).
    """

    client: int
    data_seed: int
    train_seed: int


def release_for(config: RunConfig) -> StatisticsRelease:
    """The statistics release ``config.stage1`` describes."""
    s1 = config.stage1
    return StatisticsRelease(
        enabled=s1.release_noise, clip_norm=s1.clip_norm, noise_multiplier=s1.noise_multiplier
    )


def warmup_steps(config: RunConfig) -> int:
    s1 = config.stage1
    return s1.warmup_steps if s1.warmup_steps is not None else config.local.steps


StatisticsReply = tuple[ClientStatistics, float | None]
"""A client's released stage-1 statistics and, in a simulation only, its unreleased norm."""


@dataclass(frozen=True)
class RoundPlan:
    """One round as the server planned it: who was sampled, their seeds, the charge."""

    round: int
    tasks: tuple[ClientTask, ...]
    charge: tuple | None
    """``(event, clients)`` from :func:`budget.round_charge`, or None for a non-private run
    (and for record-level DP, whose charges are :attr:`record_charges`)."""
    record: RecordDpSgd | None = None
    """Record-level DP: the DP-SGD every participant runs (None at client level)."""
    record_charges: tuple = ()
    """Record-level DP: ``(event, clients)`` per distinct example count of the participants."""
    exhausted: tuple[int, ...] = ()
    """Record-level DP: sampled clients left out because the round would take their ε past
    the target (budget stop per client)."""

    @property
    def sampled(self) -> list[int]:
        return [t.client for t in self.tasks]


class ClientPool(Protocol):
    """Runs the clients' side. Each reply is a result or the exception that replaced it."""

    def release_statistics(
        self, tasks: Sequence[Stage1Task], *, global_state: dict[str, torch.Tensor]
    ) -> Mapping[int, StatisticsReply | BaseException]: ...

    def train(
        self,
        plan: RoundPlan,
        *,
        global_state: dict[str, torch.Tensor],
        codec: Codec,
        mechanism: GaussianMechanism | None,
    ) -> Mapping[int, ClientResult | BaseException]: ...


FAILURE_CODES = (
    "no-reply",
    "client-error",
    "refused",
    "malformed-reply",
    "mechanism-mismatch",
    "no-node",
)
"""The fixed codes a client failure is reported with. Nothing from a client's exception
text enters metrics, reports or the server's records: that text can depend on its data."""


class ClientFailure(DrencoderError):
    """A client did not deliver a usable reply; ``code`` is one of :data:`FAILURE_CODES`."""

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in FAILURE_CODES:
            raise ValueError(f"failure code must be one of {FAILURE_CODES}, got {code!r}")
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


def failure_code(exc: BaseException | None) -> str:
    """The fixed code of a client's failure (``None`` = no reply arrived)."""
    if exc is None:
        return "no-reply"
    return exc.code if isinstance(exc, ClientFailure) else "client-error"
