"""What travels between the server and its clients in a round, whatever carries it:
the round plan, the client-pool interface, and the server's named random streams.

:class:`~drencoder.federated.orchestration.FederatedServer` plans rounds and hands them to
a :class:`ClientPool`: the in-process simulator or Flower SuperNodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from drencoder.codecs import Codec
from drencoder.errors import DrencoderError
from drencoder.federated.record import RecordDpSgd
from drencoder.federated.runtime import ClientResult, ClientTask
from drencoder.federated.stage1 import Stage1Task
from drencoder.mechanisms import GaussianMechanism, noise_generator, reseed_from_entropy
from drencoder.prior import ClientStatistics

StatisticsReply = tuple[ClientStatistics, float | None]
"""A client's released stage-1 statistics and, in a simulation only, its unreleased norm."""


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the named stream, stable across machines and versions."""
    digest = hashlib.sha256(f"drencoder/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
