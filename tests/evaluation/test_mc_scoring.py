"""Multiple-choice scoring: rigged models give known accuracies, batching changes nothing,
and the scores equal a direct forward pass."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from drencoder.data import MCItem, PromptFormat, encode_prompt
from drencoder.errors import ConfigError
from drencoder.evaluation import letter_token_ids, score_multiple_choice

FMT = PromptFormat(name="test", header="Questions about {subject}.\n\n")


def _items(n=12):
    # Answers cycle A, B, C, D; lengths vary so batches need padding.
    return [
        MCItem(
            question=f"Q{i}: {'x' * (i % 5)} pick {'ABCD'[i % 4]}?",
            choices=("one", "two", "three", "four"),
            answer=i % 4,
            subject="even" if i % 2 == 0 else "odd",
            uid=f"t{i}",
        )
        for i in range(n)
    ]


class PreferOne(torch.nn.Module):
    """Logits 0 everywhere except ``boost`` on one token id, at every position."""

    def __init__(self, vocab, token_id, boost=5.0):
        super().__init__()
        self.vocab, self.token_id, self.boost = vocab, token_id, boost

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token_id] = self.boost
        return SimpleNamespace(logits=logits)


class FirstTokenOracle(torch.nn.Module):
    """Prefers, at every position, the id of the first *real* token of its row: it only
    scores right if the scorer's padding and attention mask line up. No ``**kwargs``, so
    the scorer must not pass position_ids/logits_to_keep it does not accept."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask):
        first = attention_mask.argmax(dim=1)
        target = input_ids[torch.arange(len(input_ids)), first]
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[torch.arange(len(input_ids)), :, target] = 3.0
        return SimpleNamespace(logits=logits)


def test_rigged_model_scores_the_expected_accuracy(tiny_tokenizer):
    items = _items()
    _, ids = letter_token_ids(tiny_tokenizer, fmt=FMT, n_choices=4)
    vocab = len(tiny_tokenizer)
    result = score_multiple_choice(
        PreferOne(vocab, ids[1]), tiny_tokenizer, items, fmt=FMT, batch_size=5, progress=False
    )
    assert result.accuracy == pytest.approx(3 / 12)  # answers B are items 1, 5, 9
    assert result.per_subject == {"even": 0.0, "odd": 0.5}
    assert result.predictions == (1,) * 12
    # log p(B) = 5 - log(e^5 + vocab - 1); log p(other) = -log(e^5 + vocab - 1)
    log_z = math.log(math.exp(5) + vocab - 1)
    expected = (3 * (5 - log_z) + 9 * (-log_z)) / 12
    assert result.mean_logprob_correct == pytest.approx(expected, abs=1e-5)
    assert result.n_questions == 12 and result.n_shot == 0


def test_padding_and_mask_line_up(tiny_tokenizer):
    # Header-less prompts start with the answer letter, so the oracle is always right.
    fmt = PromptFormat(name="oracle")
    items = [
        MCItem(
            question=f"{'ABCD'[i % 4]}{'.' * i}",
            choices=tuple("wxyz"),
            answer=i % 4,
            subject="s",
            uid=str(i),
        )
        for i in range(9)
    ]
    result = score_multiple_choice(
        FirstTokenOracle(len(tiny_tokenizer)),
        tiny_tokenizer,
        items,
        fmt=fmt,
        batch_size=4,
        progress=False,
    )
    assert result.accuracy == 1.0


def test_batched_equals_one_by_one_and_direct_forward(tiny_model, tiny_tokenizer):
    items = _items(7)
    one = score_multiple_choice(
        tiny_model, tiny_tokenizer, items, fmt=FMT, batch_size=1, progress=False
    )
    many = score_multiple_choice(
        tiny_model, tiny_tokenizer, items, fmt=FMT, batch_size=4, progress=False
    )
    assert one.predictions == many.predictions
    torch.testing.assert_close(
        torch.tensor(one.choice_logprobs), torch.tensor(many.choice_logprobs), atol=1e-5, rtol=0
    )
    prefix, ids = letter_token_ids(tiny_tokenizer, fmt=FMT, n_choices=4)
    seq = encode_prompt(tiny_tokenizer, FMT.prompt(items[3])) + prefix
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([seq])).logits[0, -1]
    direct = torch.log_softmax(logits, -1)[ids]
    torch.testing.assert_close(torch.tensor(one.choice_logprobs[3]), direct, atol=1e-5, rtol=0)


def test_batching_is_exact_with_absolute_positions(tiny_tokenizer):
    # GPT-2 adds learned absolute position embeddings, so left padding is only harmless if
    # the scorer restarts position_ids at each row's first real token.
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tiny_tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2
    )
    torch.manual_seed(0)  # test model weights only
    model = GPT2LMHeadModel(config).eval()
    items = _items(6)
    one = score_multiple_choice(model, tiny_tokenizer, items, fmt=FMT, batch_size=1, progress=False)
    many = score_multiple_choice(
        model, tiny_tokenizer, items, fmt=FMT, batch_size=6, progress=False
    )
    torch.testing.assert_close(
        torch.tensor(one.choice_logprobs), torch.tensor(many.choice_logprobs), atol=1e-5, rtol=0
    )


def test_few_shot_and_truncation(tiny_model, tiny_tokenizer):
    items = _items(4)
    shots = {"even": items[:2], "odd": items[2:]}
    extra = [
        MCItem(question=f"New {s}?", choices=("a", "b", "c", "d"), answer=0, subject=s, uid=f"n{s}")
        for s in ("even", "odd")
    ]
    tiny_model.train()
    r = score_multiple_choice(
        tiny_model,
        tiny_tokenizer,
        extra,
        fmt=FMT,
        n_shot=2,
        exemplars=shots,
        max_length=100,
        progress=False,
    )
    assert r.n_shot == 2 and r.n_questions == 2
    assert tiny_model.training, "the model's train/eval mode is restored"
    with pytest.raises(ConfigError, match="has 2 exemplars"):
        score_multiple_choice(tiny_model, tiny_tokenizer, extra, fmt=FMT, n_shot=3, exemplars=shots)
    with pytest.raises(ConfigError, match="its own few-shot exemplars"):
        score_multiple_choice(
            tiny_model, tiny_tokenizer, items[:1], fmt=FMT, n_shot=1, exemplars=shots
        )


def test_letter_tokens_of_a_character_tokenizer(tiny_tokenizer):
    prefix, ids = letter_token_ids(tiny_tokenizer, fmt=FMT, n_choices=4)
    assert prefix == tiny_tokenizer.encode(" ", add_special_tokens=False)
    assert [tiny_tokenizer.decode([i]) for i in ids] == ["A", "B", "C", "D"]
