"""How well a codec reconstructs a batch of update vectors, and how fast: pure functions.

The design asks to measure, not assume, the reconstruction quality of every codec
(docs/codecs.md) at the same latent size k, on real client updates as well as on prior
samples. For one codec and a batch ``x`` of flat update vectors ``[n, d]``:

- :func:`reconstruction`: per vector, the relative error ``‖x − Dec(Enc(x))‖ / ‖x‖`` and
  the cosine similarity between ``x`` and its reconstruction, each averaged over the
  vectors. Both are measured in the update's own space (not a codec's normalised space).
  References: the identity codec gives error 0 and cosine 1; a codec that returns zeros
  gives error 1 and cosine 0 (the cosine of a zero vector is taken to be 0). An error
  above 1 means that sending nothing would have been better.
- :func:`timing`: seconds to encode and to decode one vector (median over the vectors of
  the batch, each encoded on its own as a client does, after one warm-up call).
- :func:`measure_codec`: both, on real and on synthetic vectors, as one JSON-ready
  :class:`CodecMeasurement`.
- :func:`prior_fit`: how far the stage-1 prior's per-block scale and mean are from those
  of real updates, which is what decides whether an encoder trained on the prior can
  work on real updates at all.

Norms and inner products are computed in float64. Nothing here draws random numbers.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from drencoder.codecs.base import Codec
from drencoder.errors import ConfigError
from drencoder.prior.sampler import PriorSampler


@dataclass(frozen=True)
class Reconstruction:
    """Mean relative error and cosine similarity over ``n`` vectors (and the worst error)."""

    rel_error: float
    cosine: float
    max_rel_error: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CodecMeasurement:
    """One codec's row of a codec report (see :func:`measure_codec`)."""

    name: str
    codec: str
    latent_dim: int
    bytes: int
    real: Reconstruction
    synthetic: Reconstruction | None
    encode_seconds: float
    decode_seconds: float

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "codec": self.codec,
            "latent_dim": self.latent_dim,
            "bytes": self.bytes,
            "real": self.real.to_dict(),
            "synthetic": None if self.synthetic is None else self.synthetic.to_dict(),
            "encode_seconds": self.encode_seconds,
            "decode_seconds": self.decode_seconds,
        }


def _check_batch(codec: Codec, x: torch.Tensor, *, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != codec.input_dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"{what} must be a tensor [n, {codec.input_dim}], got {shape}")
    if x.shape[0] < 1:
        raise ConfigError(f"{what} needs at least one vector, got n=0")
    if not x.is_floating_point() or not torch.isfinite(x).all():
        raise ConfigError(f"{what} must be finite floating point vectors, got dtype {x.dtype}")
    norms = x.double().norm(dim=1)
    if (norms == 0).any():
        zero = (norms == 0).nonzero().flatten().tolist()
        raise ConfigError(
            f"{what} has zero vectors at rows {zero[:5]}: a relative error is undefined for "
            f"them; drop them (an update of exactly zero means training did not move)"
        )
    return x


def relative_errors(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: ``‖x − y‖ / ‖x‖`` and ``cos(x, y)`` (0 where ``y`` is zero), in float64."""
    x, y = x.double(), y.double()
    xn, yn = x.norm(dim=1), y.norm(dim=1)
    err = (x - y).norm(dim=1) / xn
    denom = xn * yn
    cos = torch.where(denom > 0, (x * y).sum(1) / denom.clamp(min=1e-300), torch.zeros_like(xn))
    return err, cos.clamp(-1.0, 1.0)  # rounding can put |cos| a few ulps past 1


def reconstruction(codec: Codec, x: torch.Tensor, *, what: str = "x") -> Reconstruction:
    """Mean relative error and cosine of ``codec.decode(codec.encode(x))`` against ``x``."""
    x = _check_batch(codec, x, what=what)
    x = x.to(device=codec.device, dtype=torch.float32)
    y = codec.decode(codec.encode(x))
    err, cos = relative_errors(x, y)
    return Reconstruction(
        rel_error=float(err.mean()),
        cosine=float(cos.mean()),
        max_rel_error=float(err.max()),
        n=int(x.shape[0]),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing(codec: Codec, x: torch.Tensor, *, what: str = "x") -> tuple[float, float]:
    """Median seconds to encode one vector and to decode its latent, over the rows of ``x``."""
    x = _check_batch(codec, x, what=what).to(device=codec.device, dtype=torch.float32)
    codec.decode(codec.encode(x[0]))  # warm-up: first calls allocate and may compile
    enc, dec = [], []
    for row in x:
        _sync(codec.device)
        start = time.perf_counter()
        z = codec.encode(row)
        _sync(codec.device)
        mid = time.perf_counter()
        codec.decode(z)
        _sync(codec.device)
        end = time.perf_counter()
        enc.append(mid - start)
        dec.append(end - mid)
    return statistics.median(enc), statistics.median(dec)


def measure_codec(
    codec: Codec,
    *,
    name: str,
    real: torch.Tensor,
    synthetic: torch.Tensor | None = None,
) -> CodecMeasurement:
    """Reconstruction on ``real`` (and ``synthetic``) vectors ``[n, d]``, size and speed."""
    real_rec = reconstruction(codec, real, what="real updates")
    syn_rec = None if synthetic is None else reconstruction(codec, synthetic, what="synthetic")
    enc, dec = timing(codec, real, what="real updates")
    return CodecMeasurement(
        name=name,
        codec=codec.name,
        latent_dim=int(codec.latent_dim),
        bytes=int(codec.bytes_per_upload),
        real=real_rec,
        synthetic=syn_rec,
        encode_seconds=enc,
        decode_seconds=dec,
    )


def prior_fit(sampler: PriorSampler, real: torch.Tensor) -> dict:
    """The prior's per-block moments against those of real updates ``[n, d]``.

    Per layout block whose real entries vary (a ``lora_A`` block that did not move in one
    step is skipped): ``std_ratio`` = prior std / real std (1: the prior has the right
    scale) and ``mean_offset`` = |prior mean − real mean| / real std (0: right centre),
    the real moments taken over all entries of the block in all ``n`` updates. Returns
    ``{"blocks": m, "std_ratio": {"p10", "median", "p90"}, "mean_offset": {...}}``, the
    quantiles over the m blocks (``None`` when m = 0).
    """
    if not isinstance(sampler, PriorSampler):
        raise ConfigError(f"prior_fit needs a PriorSampler, got {type(sampler).__name__}")
    if not isinstance(real, torch.Tensor) or real.ndim != 2 or real.shape[1] != sampler.dim:
        shape = tuple(real.shape) if isinstance(real, torch.Tensor) else type(real).__name__
        raise ConfigError(f"real updates must be a tensor [n, {sampler.dim}], got {shape}")
    prior_mean, prior_std = (t.double().cpu() for t in sampler.block_moments())
    real = real.detach().double().cpu()
    ratios, offsets = [], []
    for i, block in enumerate(sampler.layout.blocks):
        entries = real[:, block.slice]
        std = float(entries.std(correction=0))
        if std > 0:
            ratios.append(float(prior_std[i]) / std)
            offsets.append(abs(float(prior_mean[i]) - float(entries.mean())) / std)

    def quantiles(values: list[float]) -> dict | None:
        if not values:
            return None
        q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        out = torch.quantile(torch.tensor(values, dtype=torch.float64), q).tolist()
        return dict(zip(("p10", "median", "p90"), out, strict=True))

    return {
        "blocks": len(ratios),
        "std_ratio": quantiles(ratios),
        "mean_offset": quantiles(offsets),
    }
