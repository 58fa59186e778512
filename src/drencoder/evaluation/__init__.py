"""Evaluation: multiple-choice scoring by answer-letter log-likelihood, held-out loss, and
the result record every score is stored with (docs/design.md §4)."""

from drencoder.evaluation.loss import LossResult, heldout_loss
from drencoder.evaluation.records import NO_ADAPTER, adapter_hash, eval_record
from drencoder.evaluation.scoring import MCResult, letter_token_ids, score_multiple_choice

__all__ = [
    "NO_ADAPTER",
    "LossResult",
    "MCResult",
    "adapter_hash",
    "eval_record",
    "heldout_loss",
    "letter_token_ids",
    "score_multiple_choice",
]
