"""Causal-LM fine-tuning examples from multiple-choice items, and their collation.

An example is ``prompt + answer``, where the prompt is ``fmt.prompt(item)`` (zero-shot by
default) and the answer is ``fmt.target(item)`` (``" B"``). Tokenisation:

* prompt: ``tokenizer(prompt)`` with the tokenizer's own special tokens (a BOS for
  Llama-style tokenizers) — the scorer in ``drencoder.evaluation`` encodes prompts the
  same way;
* answer: ``answer_token_ids`` = ``tokenizer.encode(delimiter + letter,
  add_special_tokens=False)``, appended to the prompt ids. For SmolLM2 that is one token
  (``" B"``); for a character tokenizer it is ``" "``, ``"B"``.

``labels`` follow the Hugging Face convention: aligned with ``input_ids`` (the model
shifts them), ``-100`` where no loss is taken. ``LossOn.ANSWER`` (default) takes the loss
only on the answer tokens: the model learns the task, not to reproduce question text,
which is the cheaper and less memorising objective and matches what the scorer reads.
``LossOn.FULL`` takes it on every token. ``LossOn.LETTERS`` takes it on the letter token
only, as a cross-entropy over the choices' letter tokens (the example carries
``choice_ids``, one token id per choice): it trains exactly the comparison the scorer
makes, instead of spending the gradient on the rest of the vocabulary. No EOS is
appended: nothing after the letter is ever scored.

Truncation to ``max_length`` keeps the *end* of the prompt (where the question and the
``Answer:`` cue are), drops tokens from just after the leading special tokens, and never
cuts the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

import torch

from drencoder.data.items import LETTERS, MCItem, PromptFormat, parse_enum
from drencoder.errors import ConfigError

IGNORE_INDEX = -100


class LossOn(StrEnum):
    """Which tokens of a fine-tuning example carry the loss."""

    ANSWER = "answer"
    FULL = "full"
    LETTERS = "letters"


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids with the tokenizer's default special tokens (shared with the scorer)."""
    return list(tokenizer(text)["input_ids"])


def answer_token_ids(tokenizer, letter: str, *, fmt: PromptFormat) -> list[int]:
    """Token ids of ``fmt.answer_delimiter + letter`` without special tokens."""
    ids = list(tokenizer.encode(fmt.answer_delimiter + letter, add_special_tokens=False))
    if not ids:
        raise ConfigError(f"the tokenizer encodes answer {letter!r} to no tokens")
    return ids


def letter_token_ids(
    tokenizer, *, fmt: PromptFormat, n_choices: int
) -> tuple[list[int], list[int]]:
    """``(prefix, ids)``: the tokens shared before every letter, and one id per letter.

    The letter token of ``X`` is the last token of ``fmt.answer_delimiter + X``; the tokens
    before it must be the same for every letter (the scorer appends them to the prompt).
    """
    encoded = [answer_token_ids(tokenizer, c, fmt=fmt) for c in LETTERS[:n_choices]]
    prefixes = {tuple(e[:-1]) for e in encoded}
    if len(prefixes) != 1:
        raise ConfigError(
            f"answer letters tokenize with different leading tokens {sorted(prefixes)}; "
            f"this tokenizer cannot be scored letter by letter"
        )
    ids = [e[-1] for e in encoded]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"answer letters share token ids {ids}; cannot tell them apart")
    return list(prefixes.pop()), ids


def leading_special_count(tokenizer, ids: Sequence[int]) -> int:
    """How many ids at the start are special tokens (BOS and the like)."""
    special = set(tokenizer.all_special_ids)
    n = 0
    while n < len(ids) and ids[n] in special:
        n += 1
    return n


def keep_prompt_end(ids: Sequence[int], *, budget: int, n_lead: int) -> list[int]:
    """``ids`` cut to ``budget`` tokens: the first ``n_lead`` (special) ids, then the tail."""
    if len(ids) <= budget:
        return list(ids)
    if budget <= n_lead:
        raise ConfigError(
            f"max_length leaves {budget} prompt tokens, not more than the {n_lead} leading "
            f"special tokens; raise max_length"
        )
    return list(ids[:n_lead]) + list(ids[len(ids) - (budget - n_lead) :])


def build_example(
    item: MCItem,
    tokenizer,
    *,
    fmt: PromptFormat,
    max_length: int,
    loss_on: LossOn | str = LossOn.ANSWER,
    exemplars: Sequence[MCItem] = (),
) -> dict[str, list[int]]:
    """One tokenized example ``{"input_ids", "attention_mask", "labels"}`` (lists)."""
    loss_on = parse_enum(LossOn, loss_on, name="loss_on")
    answer = answer_token_ids(tokenizer, item.answer_letter, fmt=fmt)
    if max_length <= len(answer):
        raise ConfigError(
            f"max_length must exceed the {len(answer)} answer tokens, got max_length={max_length}"
        )
    prompt = encode_prompt(tokenizer, fmt.prompt(item, exemplars))
    prompt = keep_prompt_end(
        prompt,
        budget=max_length - len(answer),
        n_lead=leading_special_count(tokenizer, prompt),
    )
    input_ids = prompt + answer
    example = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
    if loss_on is LossOn.FULL:
        example["labels"] = list(input_ids)
    elif loss_on is LossOn.ANSWER:
        example["labels"] = [IGNORE_INDEX] * len(prompt) + answer
    else:  # LETTERS: the letter token only, scored against the other choices' letters
        example["labels"] = [IGNORE_INDEX] * (len(input_ids) - 1) + answer[-1:]
        _, ids = letter_token_ids(tokenizer, fmt=fmt, n_choices=len(item.choices))
        example["choice_ids"] = ids
    return example


def build_examples(
    items: Iterable[MCItem],
    tokenizer,
    *,
    fmt: PromptFormat,
    max_length: int,
    loss_on: LossOn | str = LossOn.ANSWER,
) -> list[dict[str, list[int]]]:
    """``build_example`` over many items (zero-shot prompts)."""
    return [
        build_example(it, tokenizer, fmt=fmt, max_length=max_length, loss_on=loss_on)
        for it in items
    ]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (padding is masked, so either is safe)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ConfigError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")


def collate(
    examples: Sequence[Mapping[str, Sequence[int]]], *, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example: ``input_ids`` with ``pad_token_id``,
    ``attention_mask`` with 0 and ``labels`` with -100. Right padding is exact for causal
    models in training (real tokens never attend to the padding after them)."""
    if not examples:
        raise ConfigError("collate needs at least one example, got an empty batch")
    width = max(len(e["input_ids"]) for e in examples)
    out = {
        "input_ids": torch.full((len(examples), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
        "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long),
    }
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        labels = ex.get("labels", ex["input_ids"])
        if len(labels) != n:
            raise ConfigError(f"example {row}: {len(labels)} labels for {n} input ids")
        out["input_ids"][row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        out["attention_mask"][row, :n] = torch.as_tensor(
            ex.get("attention_mask", [1] * n), dtype=torch.long
        )
        out["labels"][row, :n] = torch.as_tensor(labels, dtype=torch.long)
    choices = [e.get("choice_ids") for e in examples]
    if any(c is not None for c in choices):
        if any(c is None for c in choices) or len({len(c) for c in choices}) != 1:
            raise ConfigError(
                "a batch mixes examples with and without choice_ids, or with different "
                "numbers of choices; build them with the same loss_on and task"
            )
        out["choice_ids"] = torch.as_tensor(choices, dtype=torch.long)
    return out
