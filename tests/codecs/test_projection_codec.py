"""Random projection: linearity, pseudo-inverse decoding, norm preservation, the ratio."""

from __future__ import annotations

import pytest
import torch

from drencoder.codecs import RandomProjectionCodec, latent_dim_for
from drencoder.errors import ConfigError


def test_linearity():
    codec = RandomProjectionCodec(input_dim=1000, compression_ratio=1 / 8, chunk_size=128)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    a, b = 0.7, -2.5
    assert torch.allclose(
        codec.encode(a * x + b * y), a * codec.encode(x) + b * codec.encode(y), atol=1e-4
    )
    zx, zy = codec.encode(x), codec.encode(y)
    assert torch.allclose(
        codec.decode(a * zx + b * zy), a * codec.decode(zx) + b * codec.decode(zy), atol=1e-4
    )


def test_pinv_decoder_is_an_orthogonal_projection():
    # d a multiple of the chunk: with a padded last chunk, decode truncates the padding, so
    # these identities hold exactly only on full chunks.
    codec = RandomProjectionCodec(input_dim=1024, compression_ratio=1 / 8, chunk_size=128)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(codec.latent_dim, generator=g)
    assert torch.allclose(codec.encode(codec.decode(z)), z, atol=1e-4)  # P P+ = I
    x = torch.randn(1024, generator=g)
    px = codec.decode(codec.encode(x))
    assert torch.allclose(codec.decode(codec.encode(px)), px, atol=1e-4)  # idempotent
    # Residual orthogonal to the kept part, so the reconstruction never exceeds the input.
    assert abs(float(torch.dot(x - px, px))) < 1e-3 * float(x.norm() ** 2)
    # For isotropic x the kept energy is about k_c / c = 1/8 (here 8 chunks x 16 of 128).
    rel = float(((x - px) ** 2).sum() / (x**2).sum())
    assert rel == pytest.approx(1 - 1 / 8, abs=0.05)


def test_latent_norm_matches_input_norm_on_average():
    # Entries N(0, 1/k_c): E|Px|^2 = |x|^2. Over 200 random inputs the mean ratio is ~1.
    codec = RandomProjectionCodec(input_dim=4096 * 2, chunk_size=4096)
    x = torch.randn(200, 8192, generator=torch.Generator().manual_seed(2))
    ratio = (codec.encode(x).norm(dim=1) ** 2 / x.norm(dim=1) ** 2).mean()
    assert float(ratio) == pytest.approx(1.0, rel=0.05)
    assert codec.latent_dim == 128 and codec.chunk_latent == 64


def test_seed_matters_and_chunk_capped_at_input():
    a = RandomProjectionCodec(input_dim=100, seed=0)
    b = RandomProjectionCodec(input_dim=100, seed=1)
    assert not torch.equal(a.matrix, b.matrix)
    assert a.chunker.chunk_size == 100 and a.latent_dim == latent_dim_for(100) == 2


def test_latent_dim_for():
    assert latent_dim_for(921_600) == 14_400
    assert latent_dim_for(4096, compression_ratio=1 / 64) == 64
    assert latent_dim_for(10, compression_ratio=1 / 3) == 4
    assert latent_dim_for(1) == 1
    with pytest.raises(ConfigError, match=r"compression_ratio must be in \(0, 1\]"):
        latent_dim_for(10, compression_ratio=2.0)
    with pytest.raises(ConfigError, match="input_dim must be a positive integer"):
        latent_dim_for(0)
