"""Privacy accounting: GDP (own), RDP and PLD (dp-accounting), a ledger, calibration,
under the add-remove or replace-one neighbouring relation; and the statistics of one-run
empirical auditing (an ε lower bound, ``audit``).

This package depends on numpy, scipy and dp-accounting only; it never imports torch, so
``drencoder privacy`` starts fast and the accounting can be audited on its own.
"""

from drencoder.accounting.accountants import (
    ALL_ACCOUNTANTS,
    Accountant,
    AccountingError,
    UnsupportedRelation,
    delta_at,
    epsilon,
    epsilons,
    parse_accountant,
    rounds_event,
)
from drencoder.accounting.audit import AuditResult, audit_scores, epsilon_lower_bound
from drencoder.accounting.calibration import calibrate, calibrate_noise_multiplier
from drencoder.accounting.events import (
    event_from_json,
    event_to_json,
    gaussian_round,
    gdp_mu,
    repeated,
)
from drencoder.accounting.gdp import (
    GdpApproximationWarning,
    delta_from_mu,
    epsilon_from_mu,
    mu_full_participation,
    mu_poisson,
)
from drencoder.accounting.ledger import Entry, PrivacyLedger
from drencoder.accounting.relation import (
    RELATION_CHOICES,
    Relation,
    charged_to,
    parse_relation,
    record_relation,
    relation_warning,
    resolve_relation,
    round_event,
)

__all__ = [
    "ALL_ACCOUNTANTS",
    "RELATION_CHOICES",
    "Accountant",
    "AccountingError",
    "AuditResult",
    "Entry",
    "GdpApproximationWarning",
    "PrivacyLedger",
    "Relation",
    "UnsupportedRelation",
    "audit_scores",
    "calibrate",
    "calibrate_noise_multiplier",
    "charged_to",
    "delta_at",
    "delta_from_mu",
    "epsilon",
    "epsilon_from_mu",
    "epsilon_lower_bound",
    "epsilons",
    "event_from_json",
    "event_to_json",
    "gaussian_round",
    "gdp_mu",
    "mu_full_participation",
    "mu_poisson",
    "parse_accountant",
    "parse_relation",
    "record_relation",
    "relation_warning",
    "repeated",
    "resolve_relation",
    "round_event",
    "rounds_event",
]
