"""Record-level DP-SGD: per-example gradients, clipping, noise and the training loop."""

from __future__ import annotations

import math

import pytest
import torch

from drencoder.data import SENTIMENT_FORMAT, build_examples, collate
from drencoder.errors import ConfigError
from drencoder.lora import (
    LoraSettings,
    TrainSettings,
    attach_lora,
    get_adapter_state,
    set_adapter_state,
)
from drencoder.lora.adapter import trainable_parameters
from drencoder.lora.dp_sgd import DpSgd, noisy_gradient, train_local_dp
from drencoder.lora.layout import Layout
from drencoder.lora.per_example import per_example_gradients
from drencoder.lora.prefix import PrefixCachedLM, StateStore
from drencoder.lora.training import _prepare, batch_loss
from drencoder.mechanisms import noise_generator
from helpers import make_tiny_llama, make_tiny_tokenizer, tiny_sentiment_items

ITEMS = tiny_sentiment_items("r", "s")


def model_with_random_adapter(*, layers="all", train_a=True, seed=0):
    """LoRA with B != 0 (B starts at zero, which would make every A gradient zero)."""
    model = attach_lora(make_tiny_llama(), LoraSettings(layers=layers, train_a=train_a), seed=0)
    g = torch.Generator().manual_seed(seed)
    state = {
        k: 0.3 * torch.randn(v.shape, generator=g) for k, v in get_adapter_state(model).items()
    }
    set_adapter_state(model, state)
    return model


def trainable_layout(model) -> Layout:
    return Layout.from_shapes({k: tuple(p.shape) for k, p in trainable_parameters(model).items()})


def batch_of(loss_on, items=ITEMS):
    tok = make_tiny_tokenizer()
    examples = build_examples(items, tok, fmt=SENTIMENT_FORMAT, max_length=48, loss_on=loss_on)
    return examples, collate(examples, pad_token_id=tok.pad_token_id)


def loop_gradients(model, examples, layout):
    """The reference: one backward pass per example, on a batch of one."""
    tok = make_tiny_tokenizer()
    params = trainable_parameters(model)
    rows = []
    for ex in examples:
        for p in params.values():
            p.grad = None
        batch_loss(model, _prepare(collate([ex], pad_token_id=tok.pad_token_id), "cpu")).backward()
        rows.append(
            layout.flatten(
                {
                    k: p.grad if p.grad is not None else torch.zeros_like(p)
                    for k, p in params.items()
                }
            )
        )
    for p in params.values():
        p.grad = None
    return torch.stack(rows)


@pytest.mark.parametrize("loss_on", ["letters", "answer", "full"])
def test_per_example_gradients_equal_a_loop_of_single_examples(loss_on):
    model = model_with_random_adapter()
    model.train()
    layout = trainable_layout(model)
    examples, batch = batch_of(loss_on)
    got, loss = per_example_gradients(model, _prepare(batch, "cpu"), layout=layout)
    want = loop_gradients(model, examples, layout)
    assert got.shape == (len(ITEMS), layout.dim)
    assert want.abs().max() > 1e-3  # not a comparison of zeros
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # The batch mean of the per-example gradients is the batch gradient when every example
    # has one labelled token (letters, answer).
    if loss_on != "full":
        assert loss == pytest.approx(
            float(batch_loss(model, _prepare(batch, "cpu")).detach()), rel=1e-5
        )


def test_per_example_gradients_through_the_prefix_cache_equal_the_full_model():
    model = model_with_random_adapter(layers="top:1")
    model.train()
    layout = trainable_layout(model)
    examples, batch = batch_of("letters")
    cached = PrefixCachedLM(model, start=1, store=StateStore())
    got, _ = per_example_gradients(cached, _prepare(batch, "cpu"), layout=layout)
    want = loop_gradients(model, examples, layout)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_ffa_lora_takes_per_example_gradients_of_b_only():
    model = model_with_random_adapter(train_a=False)
    layout = trainable_layout(model)
    assert all(".lora_B." in k for k in layout.keys)
    examples, batch = batch_of("letters")
    got, _ = per_example_gradients(model, _prepare(batch, "cpu"), layout=layout)
    torch.testing.assert_close(got, loop_gradients(model, examples, layout), rtol=1e-4, atol=1e-6)


def test_a_layout_of_other_blocks_is_refused():
    model = model_with_random_adapter()
    layout = trainable_layout(model).select(lambda k: ".lora_B." in k)
    _, batch = batch_of("letters")
    with pytest.raises(ConfigError, match="trainable LoRA matrices"):
        per_example_gradients(model, _prepare(batch, "cpu"), layout=layout)


def dp(**kw):
    base = dict(clip_norm=0.5, noise_multiplier=1.0, sample_rate=0.5, examples=8)
    return DpSgd(**{**base, **kw})


def test_clipped_per_example_norms_never_exceed_c():
    g = torch.Generator().manual_seed(0)
    per_example = torch.randn(64, 300, generator=g) * torch.logspace(-3, 3, 64)[:, None]
    # Without noise the gradient is the clipped sum over q*n; each row contributes <= C.
    from drencoder.mechanisms import clip_l2

    clipped, norms = clip_l2(per_example, clip_norm=0.5)
    assert float(torch.linalg.vector_norm(clipped.double(), dim=1).max()) <= 0.5
    grad, n_clipped, _ = noisy_gradient(
        per_example, dp(noise_multiplier=0.0, examples=128), generator=noise_generator(1)
    )
    assert n_clipped == int((norms > 0.5).sum())
    assert float(grad.double().norm()) * 64 <= 64 * 0.5 + 1e-6
    torch.testing.assert_close(grad, clipped.sum(0) / 64)


def test_clip_cosine_shows_when_clipping_turns_the_mean_around():
    # Two groups pulling opposite ways: three short gradients along +e, one long one
    # along -e. Their mean points along -e; clipped to one length C the three outvote it.
    e = torch.zeros(50)
    e[0] = 1.0
    per_example = torch.stack([0.2 * e, 0.2 * e, 0.2 * e, -3.0 * e])
    _, n_clipped, cosine = noisy_gradient(
        per_example, dp(noise_multiplier=0.0, clip_norm=0.5), generator=noise_generator(0)
    )
    assert n_clipped == 1 and cosine == pytest.approx(-1.0)
    _, n_clipped, cosine = noisy_gradient(
        per_example, dp(noise_multiplier=0.0, clip_norm=5.0), generator=noise_generator(0)
    )
    assert n_clipped == 0 and cosine == pytest.approx(1.0)
    _, _, cosine = noisy_gradient(torch.zeros((0, 50)), dp(), generator=noise_generator(0))
    assert math.isnan(cosine)


def test_noise_has_std_sigma_c_over_the_expected_batch_and_comes_from_the_generator():
    d = dp(noise_multiplier=2.0, clip_norm=0.5, sample_rate=0.25, examples=40)  # q n = 10
    empty = torch.zeros((0, 20000))
    grad, _, _ = noisy_gradient(empty, d, generator=noise_generator(3))
    assert float(grad.std()) == pytest.approx(2.0 * 0.5 / 10, rel=0.03)
    again, _, _ = noisy_gradient(empty, d, generator=noise_generator(3))
    other, _, _ = noisy_gradient(empty, d, generator=noise_generator(4))
    assert torch.equal(grad, again) and not torch.equal(grad, other)


class HalfProjection:
    """A linear codec for tests: keeps the first k coordinates, decodes by zero-filling."""

    def __init__(self, d, k):
        self.d, self.latent_dim = d, k

    def encode(self, x):
        return x[..., : self.latent_dim] * 2.0

    def decode(self, z):
        out = torch.zeros(self.d)
        out[: self.latent_dim] = z / 2.0
        return out


def test_latent_space_clips_and_noises_the_encoded_gradients():
    space = HalfProjection(30, 10)
    per_example = torch.ones(4, 30)  # latent rows 2*ones(10): norm 6.32 > C
    d = dp(noise_multiplier=0.0, clip_norm=1.0, sample_rate=0.5, examples=8)
    grad, n_clipped, _ = noisy_gradient(per_example, d, generator=noise_generator(0), space=space)
    assert n_clipped == 4
    # Each latent row clipped to norm 1: 2/sqrt(40) per coordinate; sum of 4, over q n = 4.
    expected = torch.zeros(30)
    expected[:10] = (2 / 40**0.5) / 2.0
    torch.testing.assert_close(grad, expected)
    noisy, _, _ = noisy_gradient(
        torch.zeros((0, 30)), dp(noise_multiplier=1.0), generator=noise_generator(0), space=space
    )
    assert torch.count_nonzero(noisy[10:]) == 0 and torch.count_nonzero(noisy[:10]) == 10


def test_dp_sgd_training_moves_the_adapter_deterministically_given_the_generator():
    examples, _ = batch_of("letters")
    tok = make_tiny_tokenizer()
    batches = [collate(examples[:3], pad_token_id=tok.pad_token_id), None]
    settings = TrainSettings(lr=0.1, steps=2, optimizer="sgd")

    def run(noise_seed):
        model = model_with_random_adapter()
        before = get_adapter_state(model)
        report = train_local_dp(
            model,
            batches,
            settings,
            dp(examples=len(examples)),
            layout=trainable_layout(model),
            generator=noise_generator(noise_seed),
            seed=0,
        )
        after = get_adapter_state(model)
        return {k: after[k] - before[k] for k in before}, report

    first, report = run(0)
    second, _ = run(0)
    third, _ = run(1)
    assert report.batch_sizes == [3, 0] and len(report.losses) == 1
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)
    # SGD: the update is -lr * the sum of the two noisy gradients, each of norm about
    # sigma C sqrt(d) / (q n) at most plus C b / (q n); clipping bounds the data part.
    assert all(torch.isfinite(v).all() for v in first.values())


def test_dp_sgd_settings_are_checked():
    with pytest.raises(ConfigError, match="sample_rate"):
        dp(sample_rate=0.0)
    with pytest.raises(ConfigError, match="clip_norm"):
        dp(clip_norm=-1.0)
    assert (
        DpSgd.for_client(clip_norm=1, noise_multiplier=1, batch_size=8, examples=4).sample_rate
        == 1.0
    )
    assert DpSgd.for_client(
        clip_norm=1, noise_multiplier=1, batch_size=8, examples=64
    ).expected_batch_size == pytest.approx(8.0)


def test_record_groups_sum_their_examples_before_clipping():
    """With groups the rows of a group are summed, then clipped: the same as clipping the
    summed rows (same noise draw); replacing one example moves the clipped sum by at most
    2C, and a whole group never weighs more than C."""
    torch.manual_seed(0)
    rows = torch.randn(6, 5) * 3
    groups = torch.tensor([4, 4, 7, 7, 9, 9])
    dp = DpSgd(clip_norm=1.0, noise_multiplier=0.5, sample_rate=0.5, examples=12, group=2)

    def grad(x, g):
        out, n_clipped, _ = noisy_gradient(
            x, dp, generator=torch.Generator().manual_seed(3), groups=g
        )
        return out, n_clipped

    got, n_clipped = grad(rows, groups)
    want, _ = grad(rows.reshape(3, 2, 5).sum(1), None)
    torch.testing.assert_close(got, want)
    assert n_clipped <= 3
    for trial in range(20):
        other = rows.clone()
        other[trial % 6] = torch.randn(5) * 10
        moved = (grad(other, groups)[0] - got).norm() * dp.expected_batch_size
        assert float(moved) <= 2 * dp.clip_norm + 1e-5
    # One group alone, however large its rows: its clipped contribution has norm <= C.
    alone, _ = grad(rows[:2] * 100, groups[:2])
    noise_only, _ = grad(rows[:0], groups[:0])
    assert float((alone - noise_only).norm() * dp.expected_batch_size) <= 1.0 + 1e-5
