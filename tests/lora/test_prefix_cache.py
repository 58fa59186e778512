"""The prefix cache is exact: losses, gradients and scores equal the full model's."""

from __future__ import annotations

import pytest
import torch

from drencoder.data import SENTIMENT_FORMAT, build_examples, collate
from drencoder.errors import ConfigError
from drencoder.evaluation import score_multiple_choice
from drencoder.lora import LoraSettings, attach_lora
from drencoder.lora.adapter import adapted_layers
from drencoder.lora.prefix import (
    POSITION_LOCAL,
    PrefixCachedLM,
    StateStore,
    fingerprint,
    prefix_cached,
)
from drencoder.lora.training import batch_loss
from helpers import make_tiny_llama, make_tiny_tokenizer, tiny_sentiment_items

ITEMS = tiny_sentiment_items("t", "sentiment")


def make_tiny_gemma3(seed: int = 0):
    """A 3-layer Gemma 3 with a sliding-window layer: per-layer config lists are cut too."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=80,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        final_logit_softcapping=30.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    model.eval()
    return model


def _pair(make, layers, seed=3):
    """The same adapted model twice: plain, and behind the prefix cache (in memory)."""
    settings = LoraSettings(layers=layers)
    plain = attach_lora(make(), settings, seed=seed)
    cached_base = attach_lora(make(), settings, seed=seed)
    with torch.no_grad():  # a non-zero lora_B so that gradients reach lora_A too
        for (name, p), (_, q) in zip(
            plain.named_parameters(), cached_base.named_parameters(), strict=True
        ):
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(7))
                q.copy_(p)
    return plain, prefix_cached(cached_base, mode="memory")


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("loss_on", ["answer", "letters", "full"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_loss_and_gradients_equal_the_full_model(loss_on, arch):
    tok = make_tiny_tokenizer()
    make = make_tiny_llama if arch == "llama" else make_tiny_gemma3
    plain, cached = _pair(make, "top:1")
    assert isinstance(cached, PrefixCachedLM)
    assert cached.start == (1 if arch == "llama" else 2)
    batch = collate(
        build_examples(ITEMS, tok, fmt=SENTIMENT_FORMAT, max_length=200, loss_on=loss_on),
        pad_token_id=0,
    )
    if loss_on == "full":
        batch = {k: v for k, v in batch.items() if k != "choice_ids"}
    losses = []
    for model in (plain, cached):
        model.zero_grad()
        loss = batch_loss(model, batch)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    g_plain, g_cached = _grads(plain), _grads(cached.peft_model)
    assert g_plain.keys() == g_cached.keys() and g_plain
    for name in g_plain:
        torch.testing.assert_close(g_cached[name], g_plain[name], rtol=1e-4, atol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in g_plain.values())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_last_layer_computes_only_the_needed_positions(arch):
    """With the letters loss one position per example reaches the last layer's query
    projection, output projection and MLP; the layer is restored afterwards."""
    tok = make_tiny_tokenizer()
    make = make_tiny_llama if arch == "llama" else make_tiny_gemma3
    _, cached = _pair(make, "top:1")
    batch = collate(
        build_examples(ITEMS, tok, fmt=SENTIMENT_FORMAT, max_length=200, loss_on="letters"),
        pad_token_id=0,
    )
    last = cached._parts["decoder"].layers[-1]
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, out) -> None:
            seen[name] = tuple(args[0].shape)

        return hook

    # The inner layers see what the patched forwards pass on.
    inner = {
        "q": "self_attn.q_proj.base_layer",
        "k": "self_attn.k_proj.base_layer",
        "mlp": "mlp.down_proj",
    }
    handles = [
        last.get_submodule(path).register_forward_hook(record(name)) for name, path in inner.items()
    ]
    batch_loss(cached, batch).backward()
    for h in handles:
        h.remove()
    n, length = batch["input_ids"].shape
    assert seen["q"][:2] == (n, 1)
    assert seen["mlp"][:2] == (n, 1)
    assert seen["k"][:2] == (n, length)  # keys feed every later position
    assert not any("forward" in last.get_submodule(m).__dict__ for m in POSITION_LOCAL)


def test_letters_loss_is_the_cross_entropy_over_the_choice_letters():
    tok = make_tiny_tokenizer()
    plain, _ = _pair(make_tiny_llama, "all")
    batch = collate(
        build_examples(ITEMS, tok, fmt=SENTIMENT_FORMAT, max_length=200, loss_on="letters"),
        pad_token_id=0,
    )
    loss = batch_loss(plain, batch)
    # By hand: next-token logits before the letter, restricted to the " A"/" B" letter ids.
    with torch.no_grad():
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = []
    for i, item in enumerate(ITEMS):
        n = int(batch["attention_mask"][i].sum())
        row = logits[i, n - 2, batch["choice_ids"][i]]
        expected.append(-torch.log_softmax(row, -1)[item.answer])
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_scores_equal_the_full_model(arch):
    tok = make_tiny_tokenizer()
    if arch == "gemma3":  # the char tokenizer's ids fit the tiny Gemma's vocabulary
        assert len(tok) <= 80
    make = make_tiny_llama if arch == "llama" else make_tiny_gemma3
    plain, cached = _pair(make, "top:1")
    kwargs = {"fmt": SENTIMENT_FORMAT, "batch_size": 2, "progress": False}
    a = score_multiple_choice(plain, tok, ITEMS, **kwargs)
    b = score_multiple_choice(cached, tok, ITEMS, **kwargs)
    assert a.predictions == b.predictions
    torch.testing.assert_close(
        torch.tensor(b.choice_logprobs), torch.tensor(a.choice_logprobs), rtol=1e-5, atol=1e-5
    )


def test_disk_store_is_reused_and_reads_back_the_same(tmp_path):
    tok = make_tiny_tokenizer()
    settings = LoraSettings(layers="top:1")
    model = attach_lora(make_tiny_llama(), settings, seed=0)
    first = prefix_cached(model, mode="disk", cache_root=tmp_path)
    rows = [
        e["input_ids"] for e in build_examples(ITEMS, tok, fmt=SENTIMENT_FORMAT, max_length=200)
    ]
    assert len({tuple(r) for r in rows}) == len(rows)
    assert first.warm(rows) == len(rows)
    assert first.warm(rows) == 0
    shards = list(tmp_path.glob("prefix-states/*/*.safetensors"))
    assert len(shards) == 1
    again = prefix_cached(
        attach_lora(make_tiny_llama(), settings, seed=0), mode="disk", cache_root=tmp_path
    )
    assert again.warm(rows) == 0 and again.store.computed == 0
    for r in rows:
        key = StateStore.key(r)
        torch.testing.assert_close(again.store.get(key), first.store.get(key), rtol=0, atol=0)
    # Other weights: another directory.
    other = attach_lora(make_tiny_llama(seed=1), settings, seed=0)
    assert fingerprint(other.get_base_model(), 1) != fingerprint(model.get_base_model(), 1)


def test_layers_select_where_adapters_go_and_when_the_cache_applies():
    assert adapted_layers(attach_lora(make_tiny_llama(), LoraSettings(), seed=0)) == (0, 1)
    top = attach_lora(make_tiny_llama(), LoraSettings(layers="top:1"), seed=0)
    assert adapted_layers(top) == (1,)
    # Adapters in layer 0: nothing frozen to cache, the model itself is returned.
    bottom = attach_lora(make_tiny_llama(), LoraSettings(layers="0"), seed=0)
    assert prefix_cached(bottom, mode="memory") is bottom
    assert prefix_cached(top, mode="off") is top
    with pytest.raises(ConfigError, match="more layers"):
        attach_lora(make_tiny_llama(), LoraSettings(layers="top:3"), seed=0)
    with pytest.raises(ConfigError, match="do not exist"):
        attach_lora(make_tiny_llama(), LoraSettings(layers="1,5"), seed=0)
    for bad in ("top:0", "some", "1,1", "", "-1"):
        with pytest.raises(ConfigError, match="lora layers"):
            LoraSettings(layers=bad)
    assert LoraSettings(layers=" 5, 2 ").layers == "2,5"
