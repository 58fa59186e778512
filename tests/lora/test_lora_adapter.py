"""attach_lora, adapter state get/set, layouts, deltas and the changed-adapter check."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict

from drencoder.errors import ConfigError
from drencoder.lora import (
    AdapterUpdateError,
    LoraSettings,
    adapter_delta,
    adapter_layout,
    apply_delta,
    assert_adapter_changed,
    attach_lora,
    block_kind,
    get_adapter_state,
    set_adapter_state,
    trainable_keys,
)
from helpers import make_tiny_llama

PREFIX = "base_model.model.model.layers."


def _random_like(state, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in state.items()}


@pytest.fixture
def peft_model(tiny_model):
    return attach_lora(tiny_model, LoraSettings(), seed=7)


def test_key_format_and_order(peft_model):
    keys = adapter_layout(peft_model).keys
    # 2 layers x 4 modules x (A, B); natural order, modules alphabetical, A before B.
    assert len(keys) == 16
    assert keys[:4] == (
        PREFIX + "0.self_attn.k_proj.lora_A.weight",
        PREFIX + "0.self_attn.k_proj.lora_B.weight",
        PREFIX + "0.self_attn.o_proj.lora_A.weight",
        PREFIX + "0.self_attn.o_proj.lora_B.weight",
    )
    assert keys[8].startswith(PREFIX + "1.")
    assert not any(".default" in k for k in keys)
    # Same keys as PEFT's own saved adapter (adapter_model.safetensors).
    assert set(keys) == set(get_peft_model_state_dict(peft_model))


def test_attach_is_deterministic_and_stable(peft_model):
    other = attach_lora(make_tiny_llama(), LoraSettings(), seed=7)
    a, b = get_adapter_state(peft_model), get_adapter_state(other)
    assert adapter_layout(peft_model) == adapter_layout(other)
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = get_adapter_state(attach_lora(make_tiny_llama(), LoraSettings(), seed=8))
    a_keys = [k for k in a if block_kind(k) == "A"]
    assert not any(torch.equal(a[k], third[k]) for k in a_keys)
    # PEFT starts lora_B at zero, so the wrapped model equals the base model.
    assert all(not a[k].any() for k in a if block_kind(k) == "B")


def test_attach_leaves_global_rng_untouched(tiny_model):
    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    attach_lora(tiny_model, LoraSettings(dropout=0.1), seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_wrapped_model_computes_the_base_model(tiny_model):
    ids = torch.tensor([[1, 10, 11, 12, 2]])
    with torch.no_grad():
        base = tiny_model(ids).logits
        peft_model = attach_lora(tiny_model, LoraSettings(), seed=0, device="cpu")
        assert torch.equal(peft_model(ids).logits, base)
    assert not peft_model.training


def test_flat_round_trip_is_bit_exact(peft_model):
    layout = adapter_layout(peft_model)
    state = _random_like(get_adapter_state(peft_model), seed=1)
    flat = layout.flatten(state)
    assert flat.shape == (layout.dim,) and flat.dtype == torch.float32
    back = layout.unflatten(flat)
    assert all(torch.equal(back[k], state[k]) for k in state)
    set_adapter_state(peft_model, back)
    again = get_adapter_state(peft_model)
    assert torch.equal(layout.flatten(again), flat)


def test_get_returns_detached_copies(peft_model):
    state = get_adapter_state(peft_model)
    key = next(iter(state))
    state[key].add_(1.0)
    assert not torch.equal(get_adapter_state(peft_model)[key], state[key])
    assert not any(v.requires_grad for v in state.values())


def test_set_validates(peft_model):
    state = get_adapter_state(peft_model)
    key = next(iter(state))
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(ConfigError, match="missing"):
        set_adapter_state(peft_model, missing)
    with pytest.raises(ConfigError, match="unexpected"):
        set_adapter_state(peft_model, {**state, "extra.lora_A.weight": state[key]})
    with pytest.raises(ConfigError, match="shape"):
        set_adapter_state(peft_model, {**state, key: state[key].T})
    bad = state[key].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        set_adapter_state(peft_model, {**state, key: bad})


def test_b_only_layout_and_partial_delta(peft_model):
    full = adapter_layout(peft_model)
    b_only = adapter_layout(peft_model, sent="b_only")
    assert all(block_kind(k) == "B" for k in b_only.keys)
    assert b_only.dim == sum(b.size for b in full.blocks if block_kind(b.key) == "B")
    before = get_adapter_state(peft_model)
    after = _random_like(before, seed=2)
    delta = adapter_delta(before, after)
    assert all(torch.equal(delta[k], after[k] - before[k]) for k in before)
    sent = b_only.unflatten(b_only.flatten(b_only.restrict(delta)))
    updated = apply_delta(before, sent, scale=0.5)
    for k in before:
        if block_kind(k) == "B":
            assert torch.equal(updated[k], before[k] + 0.5 * delta[k])
        else:
            assert torch.equal(updated[k], before[k])
    with pytest.raises(ConfigError, match="lacks"):
        apply_delta({}, sent)


def test_ffa_lora_freezes_a(tiny_model):
    peft_model = attach_lora(tiny_model, LoraSettings(train_a=False), seed=0)
    keys = trainable_keys(peft_model)
    assert keys == adapter_layout(peft_model, sent="b_only").keys
    base = [p for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base)


def test_attach_errors(tiny_model):
    with pytest.raises(ConfigError, match=r"\['qkv'\].*q_proj"):
        attach_lora(tiny_model, LoraSettings(target_modules=("qkv",)), seed=0)
    peft_model = attach_lora(tiny_model, LoraSettings(), seed=0)
    with pytest.raises(ConfigError, match="already carries"):
        attach_lora(peft_model, LoraSettings(), seed=0)
    with pytest.raises(ConfigError, match="seed=-1"):
        attach_lora(make_tiny_llama(), LoraSettings(), seed=-1)
    with pytest.raises(ConfigError, match="PeftModel"):
        get_adapter_state(make_tiny_llama())


def test_assert_adapter_changed(peft_model):
    before = get_adapter_state(peft_model)
    with pytest.raises(AdapterUpdateError, match="none of the 16"):
        assert_adapter_changed(before, {k: v.clone() for k, v in before.items()})
    after = {k: v + 1e-3 for k, v in before.items()}
    assert_adapter_changed(before, after, strict=True)
    one_b = next(k for k in before if block_kind(k) == "B")
    with pytest.raises(AdapterUpdateError, match="lora_B"):
        assert_adapter_changed(before, {**after, one_b: before[one_b]})
    only_b = {k: (v + 1e-3 if block_kind(k) == "B" else v) for k, v in before.items()}
    assert_adapter_changed(before, only_b)
    with pytest.raises(AdapterUpdateError, match="did not change"):
        assert_adapter_changed(before, only_b, strict=True)
    b_keys = [k for k in before if block_kind(k) == "B"]
    with pytest.raises(AdapterUpdateError, match="frozen"):
        assert_adapter_changed(before, after, keys=b_keys)
    nan = {**after, one_b: after[one_b] * float("nan")}
    with pytest.raises(AdapterUpdateError, match="NaN"):
        assert_adapter_changed(before, nan)
    with pytest.raises(ConfigError, match="not in the adapter"):
        assert_adapter_changed(before, after, keys=["nope"])
