"""Held-out loss: mean next-token negative log-likelihood over labelled tokens.

Examples are the dicts ``drencoder.data.build_example`` makes (``labels`` aligned with
``input_ids``, -100 where no loss is taken; a label at position 0 has no prediction and
is ignored, as in Hugging Face). The mean is over *tokens*, pooled across all examples
(an example with more labelled tokens weighs more), which is what a training loss
averages and what perplexity is defined on.

Batches are sorted by length and left-padded (``evaluation.batching``), so labelled
positions sit at the end of every row and only the logits from the first labelled
position on are computed: with answer-only labels that is a couple of positions instead
of the whole sequence. The model runs under ``torch.no_grad()`` in eval mode and its
mode is restored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from drencoder.data.examples import IGNORE_INDEX
from drencoder.errors import ConfigError
from drencoder.evaluation.batching import last_logits, left_pad


@dataclass(frozen=True)
class LossResult:
    mean_nll: float
    """Nats per labelled token."""
    n_tokens: int
    n_examples: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def n_questions(self) -> int:
        return self.n_examples

    @property
    def n_shot(self) -> int:
        return 0

    def metrics(self) -> dict[str, object]:
        return {"mean_nll": self.mean_nll, "perplexity": self.perplexity, "n_tokens": self.n_tokens}


def _labelled_tail(labels: Sequence[int]) -> int:
    """Tokens from the first predicted label (index >= 1) to the end; 0 if none."""
    for i in range(1, len(labels)):
        if labels[i] != IGNORE_INDEX:
            return len(labels) - i
    return 0


def heldout_loss(
    model,
    examples: Sequence[Mapping[str, Sequence[int]]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
    progress: bool = True,
) -> LossResult:
    """Mean token NLL of ``model`` on ``examples`` (see the module docstring)."""
    if not examples:
        raise ConfigError("heldout_loss needs at least one example, got none")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got batch_size={batch_size}")
    for n, ex in enumerate(examples):
        if len(ex.get("labels", ())) != len(ex["input_ids"]):
            raise ConfigError(f"example {n} needs one label per input id")
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    total, n_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            tqdm(total=len(examples), desc="held-out loss", disable=not progress) as bar,
        ):
            for start in range(0, len(order), batch_size):
                chunk = [examples[i] for i in order[start : start + batch_size]]
                bar.update(len(chunk))
                tail = max(_labelled_tail(ex["labels"]) for ex in chunk)
                if tail == 0:
                    continue
                ids, mask = left_pad([ex["input_ids"] for ex in chunk], value=pad_token_id)
                # A row's first label has no prediction; blank it so the padding before a
                # short row does not "predict" it.
                rows = [[IGNORE_INDEX, *ex["labels"][1:]] for ex in chunk]
                labels, _ = left_pad(rows, value=IGNORE_INDEX)
                logits = last_logits(model, ids, mask, keep=tail + 1)[:, :-1]
                targets = labels[:, -tail:].to(logits.device)
                total += float(
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.size(-1)),
                        targets.reshape(-1),
                        ignore_index=IGNORE_INDEX,
                        reduction="sum",
                    )
                )
                n_tokens += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if n_tokens == 0:
        raise ConfigError(
            "the examples have no labelled tokens after the first position (all labels are -100)"
        )
    return LossResult(mean_nll=total / n_tokens, n_tokens=n_tokens, n_examples=len(examples))
