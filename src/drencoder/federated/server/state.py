"""What the server's helpers read and write of a run in progress, as an interface.

:mod:`~drencoder.federated.server.codec_setup`, :mod:`~drencoder.federated.server.structured`
and :mod:`~drencoder.federated.server.summary` work on the state of a run that
:class:`~drencoder.federated.server.orchestration.FederatedServer` holds. They take it as
:class:`ServerState`, so that they depend on what they use and not on the class that uses
them (no import cycle): every attribute and method here is part of the contract, and a
helper that needs another must add it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from dp_accounting import dp_event

from drencoder import accounting
from drencoder.accounting import Relation
from drencoder.codecs import Codec
from drencoder.config import RunConfig
from drencoder.config.methods import MethodSpec
from drencoder.federated.protocol import ClientPool
from drencoder.federated.record import RecordDpSgd
from drencoder.federated.workload import Workload
from drencoder.lora import Layout
from drencoder.prior import StatisticsRelease
from drencoder.reporting.schema import MetricsRow


class ServerState(Protocol):
    """A run in progress, as the server's helpers see it."""

    config: RunConfig
    spec: MethodSpec
    run_dir: Path
    progress: bool
    model: Any
    """The PEFT model (base model with the LoRA adapter)."""
    lm: Any
    """What is trained and scored: :attr:`model` or its prefix-cached top."""
    tokenizer: Any
    layout: Layout
    global_state: dict[str, torch.Tensor]
    workload: Workload
    generators: dict[str, torch.Generator]
    release: StatisticsRelease
    relation: Relation
    relation_warning: str | None
    ledger: accounting.PrivacyLedger
    codec: Codec | None
    codec_dir: str
    codec_history: list
    codec_cumulative: torch.Tensor | None
    proxy: Workload | None
    noise_multiplier: float | None
    update_noise_multiplier: float | None
    count_noise: float | None
    clip_norm: float
    sigma_source: str
    round: int
    stop_reason: str
    rows: list[MetricsRow]

    @property
    def record_level(self) -> bool: ...

    @property
    def example_counts(self) -> list[int]: ...

    @property
    def record_dp_sgd(self) -> RecordDpSgd | None: ...

    def pool(self) -> ClientPool: ...

    def charge(
        self, event: dp_event.DpEvent, *, kind: str, label: str, round=None, clients=None
    ) -> None: ...

    def append_row(self, row: dict) -> None: ...

    def epsilons(self) -> dict[str, float] | None: ...

    def one_time_work(self) -> dict: ...
