"""What travels between the server and its clients in a round, whatever carries it:
the round plan, the client-pool interface, and the seeds the server derives.

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
from drencoder.federated.runtime import ClientResult, ClientTask
from drencoder.federated.stage1 import Stage1Task
from drencoder.mechanisms import GaussianMechanism
from drencoder.prior import ClientStatistics

StatisticsReply = tuple[ClientStatistics, float | None]
"""A client's released stage-1 statistics and, in a simulation only, its unreleased norm."""


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the named stream, stable across machines and versions."""
    digest = hashlib.sha256(f"drencoder/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class RoundPlan:
    """One round as the server planned it: who was sampled, their seeds, the charge."""

    round: int
    tasks: tuple[ClientTask, ...]
    charge: tuple | None
    """``(event, clients)`` from :func:`budget.round_charge`, or None for a non-private run."""

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


def failure_reason(exc: BaseException) -> str:
    """One line naming a client's failure, for metrics rows and warnings."""
    return f"{type(exc).__name__}: {exc}"[:300]
