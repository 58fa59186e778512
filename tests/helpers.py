"""Helpers shared by the tests: a tiny tokenizer and tiny random-weight models built in code
(no files), and tiny simulators. Tests import them from here (``from helpers import ...``);
``conftest.py`` holds only fixtures."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import torch

TINY_VOCAB = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    " ",
    *string.ascii_letters,
    *string.digits,
    *".,:?!\n-",
]


def make_tiny_tokenizer():
    """A character-level fast tokenizer with BOS/EOS/PAD, enough for scoring and training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


_TINY_LLAMAS: dict[tuple[int, int], tuple[torch.nn.Module, torch.Tensor]] = {}
"""Each tiny model built in this test process, with torch's global RNG state right after."""


def make_tiny_llama(seed: int = 0, *, vocab_size: int = len(TINY_VOCAB)):
    """A 2-layer Llama with random weights: same module names as SmolLM2 (q/k/v/o_proj).

    Built once per (seed, vocab size) and test process; each call returns a fresh copy and
    leaves torch's global RNG where building the model leaves it (tests may draw from it
    next), so every call behaves exactly like a fresh build.
    """
    key = (seed, vocab_size)
    if key not in _TINY_LLAMAS:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        torch.manual_seed(seed)  # weights of a test model only; library code never seeds globally
        model = LlamaForCausalLM(config)
        model.eval()
        _TINY_LLAMAS[key] = (model, torch.get_rng_state())
    model, rng_state = _TINY_LLAMAS[key]
    torch.set_rng_state(rng_state)
    return copy.deepcopy(model)


def tiny_model_and_tokenizer():
    """A fresh tiny model and its tokenizer: a module-level ``model_factory`` that worker
    processes can import."""
    return make_tiny_llama(), make_tiny_tokenizer()


def no_model():
    """A ``model_factory`` that fails, as a run whose model cannot be loaded."""
    raise RuntimeError("no model here")


def tiny_simulator(run_dir, overrides, *, hook=None):
    """A Simulator of the smoke preset plus ``overrides``, on a fresh tiny model."""
    from drencoder.config import load_config
    from drencoder.federated.simulator import Simulator

    return Simulator(
        load_config(preset="smoke", overrides=list(overrides)),
        run_dir,
        model_and_tokenizer=tiny_model_and_tokenizer(),
        progress=False,
        hook=hook,
    )


def resume_tiny_simulator(run_dir):
    """``Simulator.resume(run_dir)`` on a fresh tiny model."""
    from drencoder.federated.simulator import Simulator

    return Simulator.resume(run_dir, model_and_tokenizer=tiny_model_and_tokenizer(), progress=False)


TINY_REVIEWS = (
    ("Great book, loved it", 1),
    ("Awful.", 0),
    ("Fine room but noisy at night and the staff were slow", 0),
    ("Nice", 1),
    ("The delivery was quick and the phone works well", 1),
)


def tiny_sentiment_items(uid_prefix: str, subject: str = "sentiment"):
    """Five short English reviews as two-way multiple-choice items (negative, positive)."""
    from drencoder.data.items import MCItem

    return [
        MCItem(
            uid=f"{uid_prefix}{i}",
            question=q,
            choices=("negative", "positive"),
            answer=a,
            subject=subject,
        )
        for i, (q, a) in enumerate(TINY_REVIEWS)
    ]


def metrics_rows(run_dir):
    """Every row of a run directory's ``metrics.jsonl``, each checked against its type."""
    from drencoder.reporting.schema import load_metrics

    return load_metrics(Path(run_dir) / "metrics.jsonl")
