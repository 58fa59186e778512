"""Multiple-choice scoring by the log-likelihood of each answer letter.

For each item the prompt ``fmt.prompt(item, exemplars)`` (ending in ``Answer:``) is
encoded as in fine-tuning (``encode_prompt``), the model reads it, and the next-token
log-probabilities (log-softmax over the whole vocabulary) of the answer letters are
compared; the prediction is the letter with the highest one (the first on a tie).

The letter token of ``X`` is ``tok.encode(fmt.answer_delimiter + X,
add_special_tokens=False)[-1]`` — for SmolLM2 and most BPE vocabularies ``" A"`` is a
single token, so this is exactly lm-evaluation-harness's log-likelihood of the
continuation ``" A"``. Where the delimiter is a separate token (a character tokenizer,
some SentencePiece vocabularies) the tokens before the letter are the same for every
letter; they are appended to the prompt and the letter is scored after them, so the
comparison is still exact. Letters that share a token are refused.

Batching: prompts are sorted by length and left-padded, with ``position_ids`` that start
at 0 on each first real token, and only the last position's logits are requested
(``evaluation.batching``); the tests check that batched and one-by-one scores agree,
also for a model with absolute position embeddings. The model runs under ``torch.no_grad()`` in
eval mode, and its previous train/eval mode is restored afterwards.

Accuracy is the mean over questions (so subjects weigh by their size), as docs/design.md §4
specifies; per-subject accuracies are reported alongside.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from drencoder.data.examples import (
    encode_prompt,
    keep_prompt_end,
    leading_special_count,
    letter_token_ids,
    pad_token_id,
)
from drencoder.data.items import MCItem, PromptFormat
from drencoder.errors import ConfigError
from drencoder.evaluation.batching import last_logits, left_pad


@dataclass(frozen=True)
class MCResult:
    accuracy: float
    per_subject: Mapping[str, float]
    per_subject_n: Mapping[str, int]
    mean_logprob_correct: float
    """Mean over questions of log p(correct letter | prompt), full-vocabulary softmax."""
    n_questions: int
    n_shot: int
    predictions: tuple[int, ...] = field(repr=False)
    """Predicted choice index per item, in input order."""
    choice_logprobs: tuple[tuple[float, ...], ...] = field(repr=False)
    """Per item, log p(letter | prompt) of each choice (for calibration or error analysis)."""

    def metrics(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "mean_logprob_correct": self.mean_logprob_correct,
            "per_subject": dict(self.per_subject),
            "per_subject_n": dict(self.per_subject_n),
        }


def prompt_sequences(
    tokenizer,
    items: Sequence[MCItem],
    *,
    fmt: PromptFormat,
    n_shot: int = 0,
    exemplars: Mapping[str, Sequence[MCItem]] | None = None,
    max_length: int | None = None,
) -> tuple[list[list[int]], list[int]]:
    """The token ids the scorer feeds for each item, and the letter token ids it reads."""
    prefix, letter_ids = letter_token_ids(
        tokenizer, fmt=fmt, n_choices=max(len(it.choices) for it in items)
    )
    sequences = []
    for item in items:
        shots: Sequence[MCItem] = ()
        if n_shot:
            pool = (exemplars or {}).get(item.subject, ())
            if len(pool) < n_shot:
                raise ConfigError(
                    f"n_shot={n_shot} but subject {item.subject!r} has {len(pool)} exemplars"
                )
            shots = pool[:n_shot]
            if any(s.uid == item.uid for s in shots):
                raise ConfigError(f"item {item.uid!r} is among its own few-shot exemplars")
        ids = encode_prompt(tokenizer, fmt.prompt(item, shots))
        n_lead = leading_special_count(tokenizer, ids)
        ids = ids + prefix
        if max_length is not None:
            ids = keep_prompt_end(ids, budget=max_length, n_lead=n_lead)
        sequences.append(ids)
    return sequences, letter_ids


def score_multiple_choice(
    model,
    tokenizer,
    items: Sequence[MCItem],
    *,
    fmt: PromptFormat,
    n_shot: int = 0,
    exemplars: Mapping[str, Sequence[MCItem]] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
) -> MCResult:
    """Score ``items`` (see the module docstring).

    ``exemplars[item.subject][:n_shot]`` precede each question; an item may not be one of
    its own exemplars. ``max_length`` cuts over-long prompts from the front (after any
    leading special tokens), keeping the question.
    """
    if not items:
        raise ConfigError("score_multiple_choice needs at least one item, got none")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got batch_size={batch_size}")
    if n_shot < 0:
        raise ConfigError(f"n_shot must be >= 0, got n_shot={n_shot}")
    sequences, letter_ids = prompt_sequences(
        tokenizer, items, fmt=fmt, n_shot=n_shot, exemplars=exemplars, max_length=max_length
    )
    warm = getattr(model, "warm", None)
    if callable(warm):  # a prefix-cached model: compute missing prefix states in big batches
        warm(sequences, progress=progress)
    pad_id = pad_token_id(tokenizer)
    order = sorted(range(len(items)), key=lambda i: -len(sequences[i]))
    letter_index = torch.as_tensor(letter_ids, dtype=torch.long)
    letter_logprobs: list[torch.Tensor | None] = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            tqdm(total=len(items), desc=f"{fmt.name} scoring", disable=not progress) as bar,
        ):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, mask = left_pad([sequences[i] for i in chunk], value=pad_id)
                logp = torch.log_softmax(last_logits(model, ids, mask, keep=1)[:, -1], dim=-1).cpu()
                for row, i in enumerate(chunk):
                    letter_logprobs[i] = logp[row, letter_index[: len(items[i].choices)]]
                bar.update(len(chunk))
    finally:
        model.train(was_training)

    predictions = tuple(int(torch.argmax(lp)) for lp in letter_logprobs)
    correct = [p == it.answer for p, it in zip(predictions, items, strict=True)]
    hits, sizes = Counter(), Counter()
    for ok, it in zip(correct, items, strict=True):
        sizes[it.subject] += 1
        hits[it.subject] += ok
    gold = [float(lp[it.answer]) for lp, it in zip(letter_logprobs, items, strict=True)]
    return MCResult(
        accuracy=sum(correct) / len(items),
        per_subject={s: hits[s] / sizes[s] for s in sorted(sizes)},
        per_subject_n={s: sizes[s] for s in sorted(sizes)},
        mean_logprob_correct=sum(gold) / len(gold),
        n_questions=len(items),
        n_shot=n_shot,
        predictions=predictions,
        choice_logprobs=tuple(tuple(lp.tolist()) for lp in letter_logprobs),
    )
