"""The contract every Codec passes, parametrised over all codecs.

Small d = 352, not a multiple of the chunk size 64 (the last chunk is zero-padded), and a
compression ratio of 1/8 so that the latents are not trivially small.
"""

from __future__ import annotations

import json

import pytest
import torch

from drencoder.codecs import (
    Codec,
    ConvAutoencoderCodec,
    IdentityCodec,
    MlpAutoencoderCodec,
    RandomProjectionCodec,
    SubspaceCodec,
    load_codec,
    registered_codecs,
)
from drencoder.codecs.bases import allocate, random_bases
from drencoder.errors import CheckpointError, ConfigError
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
D = LAYOUT.dim  # 352
RATIO = 1 / 8


def make_sampler() -> PriorSampler:
    stats = BlockStatistics(
        layout=LAYOUT, means=[1e-3, -2e-3, 0.0, 5e-4], stds=[2e-3, 1e-2, 4e-3, 6e-3]
    )
    return PriorSampler(PooledStatistics.single(stats))


def build(name: str, seed: int = 0) -> Codec:
    gen = torch.Generator().manual_seed(seed)
    if name == "identity":
        return IdentityCodec(input_dim=D)
    if name == "random-projection":
        return RandomProjectionCodec(input_dim=D, compression_ratio=RATIO, chunk_size=64, seed=seed)
    if name == "subspace":
        dims = allocate(LAYOUT, latent=round(D * RATIO))
        return SubspaceCodec(layout=LAYOUT, bases=random_bases(LAYOUT, dims, generator=gen))
    if name == "mlp-autoencoder":
        return MlpAutoencoderCodec.for_prior(
            make_sampler(), generator=gen, compression_ratio=RATIO, chunk_size=64, hidden=32
        )
    return ConvAutoencoderCodec.for_prior(
        make_sampler(), generator=gen, compression_ratio=RATIO, stages=2, channels=4
    )


NAMES = ["identity", "random-projection", "subspace", "mlp-autoencoder", "conv-autoencoder"]
EXPECTED_LATENT = {
    "identity": D,
    "random-projection": 6 * 8,  # ceil(352 / 64) = 6 chunks of 64 -> 8 each
    "mlp-autoencoder": 6 * 8,
    "subspace": 44,  # round(352 / 8): a_b = 3, 3, 3, 2 long-side vectors times r = 4
    "conv-autoencoder": 2 * 5 * 5,  # 20x20 grid, 2 stages -> 5x5, 16/8 = 2 channels
}


@pytest.fixture(scope="module")
def updates() -> torch.Tensor:
    return make_sampler().sample(5, generator=torch.Generator().manual_seed(123))


def test_every_registered_codec_is_covered():
    assert set(registered_codecs()) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
class TestCodecContract:
    def test_shapes_dtype_and_payload(self, name, updates):
        codec = build(name)
        assert codec.name == name and codec.input_dim == D
        assert codec.latent_dim == EXPECTED_LATENT[name]
        assert codec.bytes_per_upload == 4 * codec.latent_dim
        z = codec.encode(updates)
        assert z.shape == (5, codec.latent_dim) and z.dtype == torch.float32
        x = codec.decode(z)
        assert x.shape == (5, D) and x.dtype == torch.float32
        assert codec.encode(updates[0]).shape == (codec.latent_dim,)
        assert codec.decode(z[0]).shape == (D,)
        assert codec.encode(updates.double()).dtype == torch.float32
        assert torch.isfinite(x).all()

    def test_batch_matches_single(self, name, updates):
        codec = build(name)
        z = codec.encode(updates)
        x = codec.decode(z)
        for i in range(len(updates)):
            assert torch.allclose(codec.encode(updates[i]), z[i], rtol=1e-5, atol=1e-6)
            assert torch.allclose(codec.decode(z[i]), x[i], rtol=1e-5, atol=1e-7)

    def test_deterministic_under_a_seed_and_global_rng_untouched(self, name, updates):
        state = torch.random.get_rng_state()
        a, b = build(name, seed=4), build(name, seed=4)
        assert torch.equal(torch.random.get_rng_state(), state)
        assert torch.equal(a.encode(updates), b.encode(updates))
        z = a.encode(updates)
        assert torch.equal(a.decode(z), b.decode(z))

    def test_save_load_round_trip(self, name, updates, tmp_path):
        codec = build(name, seed=2)
        codec.save(tmp_path / "c")
        assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
            "codec.json",
            "codec.safetensors",
        ]
        loaded = load_codec(tmp_path / "c")
        assert type(loaded) is type(codec)
        assert json.dumps(loaded.config(), sort_keys=True) == json.dumps(
            codec.config(), sort_keys=True
        )
        s1, s2 = codec.state_dict(), loaded.state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
        z = codec.encode(updates)
        assert torch.equal(loaded.encode(updates), z)
        assert torch.equal(loaded.decode(z), codec.decode(z))

    def test_input_not_mutated_and_bad_shapes_refused(self, name, updates):
        codec = build(name)
        before = updates.clone()
        codec.decode(codec.encode(updates))
        assert torch.equal(updates, before)
        with pytest.raises(ConfigError, match=rf"takes \[{D}\] or \[n, {D}\], got \(5, 3\)"):
            codec.encode(torch.zeros(5, 3))
        with pytest.raises(ConfigError, match="got"):
            codec.decode(torch.zeros(2, 2, codec.latent_dim))
        with pytest.raises(ConfigError, match="floating point"):
            codec.encode(torch.zeros(D, dtype=torch.long))


def test_identity_is_exact(updates):
    codec = build("identity")
    assert torch.equal(codec.encode(updates), updates)
    assert torch.equal(codec.decode(codec.encode(updates)), updates)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no saved codec"):
        load_codec(tmp_path)
    build("identity").save(tmp_path)
    meta = json.loads((tmp_path / "codec.json").read_text())
    (tmp_path / "codec.json").write_text(json.dumps({**meta, "codec": "zip"}))
    with pytest.raises(CheckpointError, match="unknown codec 'zip'"):
        load_codec(tmp_path)
