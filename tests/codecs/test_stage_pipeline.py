"""Stages 1 and 2 end to end with this package's pieces only (no model): shapes and wiring."""

from __future__ import annotations

import torch

from drencoder.codecs import MlpAutoencoderCodec, train_autoencoder
from drencoder.lora.layout import Layout
from drencoder.mechanisms import GaussianMechanism
from drencoder.prior import ClientStatistics, PriorSampler, StatisticsRelease, pool_statistics

LAYOUT = Layout.from_shapes(
    {f"layers.{i}.q_proj.lora_{ab}": (8, 16) for i in range(3) for ab in "AB"}
)


def test_statistics_to_prior_to_codec_to_private_aggregate():
    gen = torch.Generator().manual_seed(0)
    # Stage 1: three clients, two warm-up epochs each, released with DP and pooled.
    clients = [
        ClientStatistics.of(
            [torch.randn(LAYOUT.dim, generator=gen) * 1e-3 for _ in range(2)], layout=LAYOUT
        )
        for _ in range(3)
    ]
    release = StatisticsRelease(clip_norm=0.05, noise_multiplier=1.0)
    released = [release.release(c, generator=gen) for c in clients]
    pooled = pool_statistics(released, released_noise_std=release.noise_std)
    sampler = PriorSampler(pooled)
    codec = MlpAutoencoderCodec.for_prior(
        sampler, generator=gen, compression_ratio=1 / 4, chunk_size=128, hidden=16
    )
    train_autoencoder(codec, sampler, generator=gen, steps=3, progress=False)
    # Stage 2, one round: encode, clip + local noise, mean, decode.
    updates = torch.randn(3, LAYOUT.dim, generator=gen) * 1e-3
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=0.8)
    messages = mech.privatize(codec.encode(updates), generator=gen)
    decoded = codec.decode(mech.aggregate_noise(messages.mean(0), n=3, generator=gen))
    assert messages.shape == (3, codec.latent_dim) and decoded.shape == (LAYOUT.dim,)
    # Central placement: the server noises the sum of clipped latents.
    central = GaussianMechanism(clip_norm=1.0, noise_multiplier=0.8, placement="central")
    total = central.privatize(codec.encode(updates), generator=gen).sum(0)
    assert codec.decode(central.aggregate_noise(total, generator=gen)).shape == (LAYOUT.dim,)
