"""Empirical privacy auditing of a federated run (``drencoder audit``).

:mod:`drencoder.audit.canaries` defines the canary clients and their scores,
:mod:`drencoder.audit.harness` runs a federation with them and turns the scores into an
ε lower bound with the statistics of :mod:`drencoder.accounting.audit` (Steinke, Nasr,
Jagielski, NeurIPS 2023). docs/privacy.md states what each audit models and what it does
not cover.
"""

from drencoder.audit.canaries import CanaryScores, CanarySet, draw_coins
from drencoder.audit.harness import (
    DEFAULT_CANARIES,
    DEFAULT_CONFIDENCE,
    AuditEntry,
    AuditSimulator,
    check_auditable,
    party,
    run_audit,
)

__all__ = [
    "DEFAULT_CANARIES",
    "DEFAULT_CONFIDENCE",
    "AuditEntry",
    "AuditSimulator",
    "CanaryScores",
    "CanarySet",
    "check_auditable",
    "draw_coins",
    "party",
    "run_audit",
]
