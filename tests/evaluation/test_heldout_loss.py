"""Held-out loss equals the Hugging Face loss and pools tokens across examples."""

from __future__ import annotations

import math

import pytest
import torch

from drencoder.data import MCItem, PromptFormat, build_examples, pad_token_id
from drencoder.errors import ConfigError
from drencoder.evaluation import heldout_loss

FMT = PromptFormat(name="test")
ITEMS = [
    MCItem(question=f"Is {w} big?", choices=("no", "yes"), answer=i % 2, subject="s", uid=str(i))
    for i, w in enumerate(["a", "cat", "an elephant", "the sea", "x"])
]


@pytest.mark.parametrize("loss_on", ["answer", "full"])
def test_matches_hf_loss_token_weighted(tiny_model, tiny_tokenizer, loss_on):
    examples = build_examples(ITEMS, tiny_tokenizer, fmt=FMT, max_length=128, loss_on=loss_on)
    result = heldout_loss(
        tiny_model,
        examples,
        pad_token_id=pad_token_id(tiny_tokenizer),
        batch_size=2,
        progress=False,
    )
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            out = tiny_model(
                input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])
            )
            n = sum(label != -100 for label in ex["labels"][1:])
            total += float(out.loss) * n
            tokens += n
    assert result.n_tokens == tokens and result.n_examples == len(ITEMS)
    assert result.mean_nll == pytest.approx(total / tokens, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll))


def test_rejects_unlabelled_examples(tiny_model):
    with pytest.raises(ConfigError, match="no labelled tokens"):
        heldout_loss(
            tiny_model,
            [{"input_ids": [5, 6], "labels": [-100, -100]}],
            pad_token_id=0,
            progress=False,
        )
    with pytest.raises(ConfigError, match="at least one example"):
        heldout_loss(tiny_model, [], pad_token_id=0)


class NoExtras(torch.nn.Module):
    """Accepts only input_ids and attention_mask: the loss must slice logits itself."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_model_without_logits_to_keep(tiny_model, tiny_tokenizer):
    examples = build_examples(ITEMS, tiny_tokenizer, fmt=FMT, max_length=128)
    pad = pad_token_id(tiny_tokenizer)
    ref = heldout_loss(tiny_model, examples, pad_token_id=pad, batch_size=1, progress=False)
    got = heldout_loss(
        NoExtras(tiny_model), examples, pad_token_id=pad, batch_size=5, progress=False
    )
    assert got.mean_nll == pytest.approx(ref.mean_nll, abs=1e-5) and got.n_tokens == ref.n_tokens
