"""Auto-encoder training: learns on the prior, only ever sees prior samples, deterministic."""

from __future__ import annotations

import pytest
import torch

from drencoder.codecs import (
    ConvAutoencoderCodec,
    MlpAutoencoderCodec,
    Normalization,
    train_autoencoder,
)
from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.prior import BlockStatistics, PooledStatistics, PriorSampler

LAYOUT = Layout.from_shapes(
    {
        "layers.0.q_proj.lora_A": (4, 24),
        "layers.0.q_proj.lora_B": (24, 4),
        "layers.1.q_proj.lora_A": (4, 24),
        "layers.1.q_proj.lora_B": (16, 4),
    }
)
# Update-sized statistics (entries of order 1e-3), as after a short LoRA warm-up.
STATS = BlockStatistics(
    layout=LAYOUT, means=[1e-3, -2e-3, 0.0, 5e-4], stds=[2e-3, 1e-2, 4e-3, 6e-3]
)


def sampler() -> PriorSampler:
    return PriorSampler(PooledStatistics.single(STATS))


def mlp(seed=0, **kw):
    kw = {"compression_ratio": 1 / 4, "chunk_size": 64, "hidden": 64, **kw}
    return MlpAutoencoderCodec.for_prior(
        sampler(), generator=torch.Generator().manual_seed(seed), **kw
    )


def conv(seed=0):
    return ConvAutoencoderCodec.for_prior(
        sampler(),
        generator=torch.Generator().manual_seed(seed),
        compression_ratio=1 / 4,
        stages=2,
        channels=8,
    )


def relative_errors(codec, x):
    """Relative squared error in the raw space and in the codec's normalised space."""
    y = codec.decode(codec.encode(x))
    xn, yn = codec.prepare(x), codec.prepare(y)
    return float(((y - x) ** 2).sum() / (x**2).sum()), float(((yn - xn) ** 2).sum() / (xn**2).sum())


@pytest.mark.parametrize(("make", "steps"), [(mlp, 150), (conv, 150)])
def test_trained_autoencoder_beats_zero_output_on_fresh_prior_samples(make, steps):
    codec = make()
    report = train_autoencoder(
        codec, sampler(), generator=torch.Generator().manual_seed(1), steps=steps, progress=False
    )
    assert report.final_loss < report.initial_loss
    fresh = sampler().sample(300, generator=torch.Generator().manual_seed(999))
    raw, normalised = relative_errors(codec, fresh)
    # Zero output has relative error 1; so does predicting the prior mean in normalised space.
    # A linear AE keeping 1/4 of the (isotropic, standardised) energy reaches 0.75 at best.
    assert raw < 1.0
    assert normalised < 0.97


def test_training_path_accepts_only_a_prior_sampler():
    codec = mlp()
    real_updates = torch.randn(8, LAYOUT.dim, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"only from a PriorSampler.*got Tensor"):
        train_autoencoder(codec, real_updates, generator=torch.Generator(), steps=1)
    with pytest.raises(ConfigError, match="needs a PriorSampler, got Tensor"):
        MlpAutoencoderCodec.for_prior(real_updates, generator=torch.Generator())


class SpySampler(PriorSampler):
    """A PriorSampler that remembers every batch it hands out."""

    def __init__(self, pooled):
        super().__init__(pooled)
        self.batches: list[torch.Tensor] = []

    def sample(self, n, *, generator):
        out = super().sample(n, generator=generator)
        self.batches.append(out.clone())
        return out


@pytest.mark.parametrize("make", [mlp, conv])
def test_every_training_batch_came_from_the_sampler(make):
    codec = make()
    spy = SpySampler(PooledStatistics.single(STATS))
    seen: list[torch.Tensor] = []
    hook = codec.network.encoder.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone())
    )
    try:
        train_autoencoder(
            codec, spy, generator=torch.Generator().manual_seed(3), steps=5, progress=False
        )
    finally:
        hook.remove()
    assert len(seen) == len(spy.batches) == 5
    for inputs, batch in zip(seen, spy.batches, strict=True):
        assert torch.equal(inputs, codec.prepare(batch))


def test_training_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = mlp(seed=5), mlp(seed=5)
    ra = train_autoencoder(
        a, sampler(), generator=torch.Generator().manual_seed(7), steps=20, progress=False
    )
    rb = train_autoencoder(
        b, sampler(), generator=torch.Generator().manual_seed(7), steps=20, progress=False
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    assert ra.losses == rb.losses and len(ra.losses) == 2
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ra.to_dict()["lr"] == 2e-4 and ra.samples_per_step == a.default_samples_per_step()


def test_progress_bar_can_be_disabled(capsys):
    train_autoencoder(mlp(), sampler(), generator=torch.Generator(), steps=2, progress=False)
    assert capsys.readouterr().err == ""


def test_normalisation_options():
    mean, std = sampler().block_moments()
    block = mlp()
    assert torch.equal(block.shift, mean) and torch.equal(block.scale, std)
    glob = mlp(normalization=Normalization.GLOBAL)
    assert (glob.shift == 0).all() and (glob.scale == glob.scale[0]).all()
    # The prior's root mean square entry: sqrt(sum(size * (s^2 + m^2)) / d).
    sizes = torch.tensor([96.0, 96.0, 96.0, 64.0])
    rms = float((sizes * (std.double() ** 2 + mean.double() ** 2)).sum() / sizes.sum()) ** 0.5
    assert float(glob.scale[0]) == pytest.approx(rms, rel=1e-6)
    none = mlp(normalization="none")
    assert (none.shift == 0).all() and (none.scale == 1).all()
    with pytest.raises(ConfigError, match="Normalization must be one of 'block', 'global', 'none'"):
        mlp(normalization="zscore")


def test_conv_ratio_must_give_whole_channels():
    with pytest.raises(ConfigError, match="whole number of latent channels"):
        ConvAutoencoderCodec.for_prior(
            sampler(), generator=torch.Generator(), compression_ratio=1 / 64, stages=2
        )


def test_layout_mismatch_refused():
    other = PriorSampler(
        PooledStatistics.single(
            BlockStatistics(layout=Layout.from_shapes({"a": (352,)}), means=[0.0], stds=[1.0])
        )
    )
    with pytest.raises(ConfigError, match="layout does not match"):
        train_autoencoder(mlp(), other, generator=torch.Generator(), steps=1)
