"""Fine-tuning examples: labels, truncation that keeps the prompt's end, and collation."""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors

from drencoder.data import (
    IGNORE_INDEX,
    LossOn,
    MCItem,
    PromptFormat,
    build_example,
    build_examples,
    collate,
    pad_token_id,
)
from drencoder.data.examples import keep_prompt_end
from drencoder.errors import ConfigError

# The tiny tokenizer knows ASCII letters, digits, ".,:?!\n-" and space only, so the MMLU
# header (which has parentheses) is replaced by one it can encode.
FMT = PromptFormat(name="test", header="Questions about {subject}.\n\n")
ITEM = MCItem(
    question="Which is even?", choices=("1", "2", "3", "5"), answer=1, subject="math", uid="m1"
)


def test_answer_only_labels(tiny_tokenizer):
    ex = build_example(ITEM, tiny_tokenizer, fmt=FMT, max_length=512)
    text = tiny_tokenizer.decode(ex["input_ids"])
    assert text == FMT.prompt(ITEM) + " B"
    answer = tiny_tokenizer.encode(" B", add_special_tokens=False)
    n = len(ex["input_ids"])
    assert ex["labels"] == [IGNORE_INDEX] * (n - len(answer)) + answer
    assert ex["attention_mask"] == [1] * n


def test_full_text_labels(tiny_tokenizer):
    ex = build_example(ITEM, tiny_tokenizer, fmt=FMT, max_length=512, loss_on="full")
    assert ex["labels"] == ex["input_ids"]
    with pytest.raises(ConfigError, match="loss_on must be one of"):
        build_example(ITEM, tiny_tokenizer, fmt=FMT, max_length=512, loss_on="prompt")


def test_truncation_keeps_the_end_of_the_prompt(tiny_tokenizer):
    ex = build_example(ITEM, tiny_tokenizer, fmt=FMT, max_length=40)
    assert len(ex["input_ids"]) == 40
    assert tiny_tokenizer.decode(ex["input_ids"]).endswith("C. 3\nD. 5\nAnswer: B")
    with pytest.raises(ConfigError, match="max_length=2"):
        build_example(ITEM, tiny_tokenizer, fmt=FMT, max_length=2)


def test_truncation_keeps_a_leading_bos(tiny_tokenizer):
    tiny_tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tiny_tokenizer.bos_token_id)]
    )
    ex = build_example(ITEM, tiny_tokenizer, fmt=FMT, max_length=30)
    assert ex["input_ids"][0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.decode(ex["input_ids"][1:]).endswith("\nAnswer: B")
    assert keep_prompt_end([9, 1, 2, 3, 4], budget=3, n_lead=1) == [9, 3, 4]
    with pytest.raises(ConfigError, match="raise max_length"):
        keep_prompt_end([9, 1, 2], budget=1, n_lead=1)


def test_collate_pads_right_with_ignored_labels(tiny_tokenizer):
    items = [ITEM, MCItem(question="Hi?", choices=("a", "b"), answer=0, subject="x", uid="h")]
    examples = build_examples(items, tiny_tokenizer, fmt=FMT, max_length=512)
    pad = pad_token_id(tiny_tokenizer)
    batch = collate(examples, pad_token_id=pad)
    short = len(examples[1]["input_ids"])
    width = len(examples[0]["input_ids"])
    assert batch["input_ids"].shape == (2, width)
    assert torch.equal(
        batch["attention_mask"][1, short:], torch.zeros(width - short, dtype=torch.long)
    )
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == pad).all()
    assert batch["labels"][0].tolist() == examples[0]["labels"]
    with pytest.raises(ConfigError, match="empty batch"):
        collate([], pad_token_id=pad)


def test_loss_on_enum_values():
    assert LossOn("answer") is LossOn.ANSWER and str(LossOn.FULL) == "full"
