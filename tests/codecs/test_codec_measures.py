"""The codec-report measures: reference values of relative error and cosine, timing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from drencoder.codecs import Codec, IdentityCodec, RandomProjectionCodec
from drencoder.codecs.report import (
    measure_codec,
    prior_fit,
    reconstruction,
    relative_errors,
    timing,
)
from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.prior import ClientStatistics, PriorSampler, pool_statistics

D = 96


class _Scaled(Codec):
    """Decodes to ``factor · x`` (0: sends nothing; -1: the opposite update)."""

    name = "test-scaled"

    def __init__(self, factor: float) -> None:
        self.factor = factor

    input_dim = latent_dim = D  # type: ignore[assignment]

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.clone()

    def config(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_saved(cls, config, tensors):  # pragma: no cover - never saved
        raise NotImplementedError


def vectors(n=5, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 1e-3


def test_identity_is_exact():
    rec = reconstruction(IdentityCodec(input_dim=D), vectors())
    assert rec.rel_error == 0.0 and rec.max_rel_error == 0.0
    assert rec.cosine == pytest.approx(1.0, abs=1e-12)
    assert rec.n == 5


@pytest.mark.parametrize(("factor", "error", "cosine"), [(0.0, 1.0, 0.0), (-1.0, 2.0, -1.0)])
def test_zero_and_negating_codecs(factor, error, cosine):
    # ‖x − c·x‖/‖x‖ = |1 − c| and cos(x, c·x) = sign(c) (0 for the zero vector, by definition).
    rec = reconstruction(_Scaled(factor), vectors())
    assert rec.rel_error == pytest.approx(error, abs=1e-12)
    assert rec.cosine == pytest.approx(cosine, abs=1e-12)


def test_random_projection_keeps_about_k_over_c_of_a_random_vector():
    # A random vector keeps ~k/c of its energy under an orthogonal projection onto k of c
    # dimensions: relative error ~ sqrt(1 - k/c) = sqrt(3/4), cosine ~ sqrt(k/c) = 1/2.
    codec = RandomProjectionCodec(input_dim=D, compression_ratio=1 / 4, chunk_size=D, seed=0)
    rec = reconstruction(codec, vectors(n=200))
    assert rec.rel_error == pytest.approx(0.75**0.5, abs=0.03)
    assert rec.cosine == pytest.approx(0.5, abs=0.05)


def test_per_row_values():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    y = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    err, cos = relative_errors(x, y)
    assert err.tolist() == pytest.approx([0.8, 1.0])
    assert cos.tolist() == pytest.approx([0.6, 0.0])


def test_bad_inputs_are_refused():
    codec = IdentityCodec(input_dim=D)
    with pytest.raises(ConfigError, match=r"\[n, 96\]"):
        reconstruction(codec, torch.zeros(D))
    x = vectors()
    x[2] = 0
    with pytest.raises(ConfigError, match="zero vectors at rows \\[2\\]"):
        reconstruction(codec, x)
    with pytest.raises(ConfigError, match="finite"):
        reconstruction(codec, torch.full((1, D), float("nan")))


def test_measure_codec_is_json_ready_with_timings():
    codec = RandomProjectionCodec(input_dim=D, compression_ratio=1 / 8, chunk_size=32, seed=1)
    row = measure_codec(codec, name="random-projection", real=vectors(3), synthetic=vectors(4, 1))
    data = json.loads(json.dumps(row.to_dict()))
    assert data["latent_dim"] == 12 and data["bytes"] == 48
    assert data["real"]["n"] == 3 and data["synthetic"]["n"] == 4
    assert data["encode_seconds"] > 0 and data["decode_seconds"] > 0
    enc, dec = timing(codec, vectors(2))
    assert enc > 0 and dec > 0


def test_prior_fit_of_a_prior_built_from_the_same_updates():
    layout = Layout.from_shapes({"a.lora_A": (4, 8), "a.lora_B": (8, 4), "b.lora_B": (8, 4)})
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(3, layout.dim, generator=gen) * torch.tensor([1e-3] * 32 + [5e-3] * 64)
    real[:, :32] = 0  # lora_A that did not move: skipped
    # One client, one "epoch" per update: the prior is an equal-weight mixture of the three
    # updates' per-block Gaussians, whose moments are exactly those of all entries pooled.
    pooled = pool_statistics([ClientStatistics.of(list(real), layout=layout)])
    fit = prior_fit(PriorSampler(pooled), real)
    assert fit["blocks"] == 2
    assert fit["std_ratio"]["median"] == pytest.approx(1.0, abs=1e-5)
    assert fit["mean_offset"]["median"] == pytest.approx(0.0, abs=1e-5)
    scaled = pool_statistics([ClientStatistics.of(list(real * 100), layout=layout)])
    assert prior_fit(PriorSampler(scaled), real)["std_ratio"]["median"] == pytest.approx(100.0)
    with pytest.raises(ConfigError, match=r"\[n, 96\]"):
        prior_fit(PriorSampler(pooled), real[:, :10])
