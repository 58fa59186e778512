"""L2 clipping that never lets a norm exceed the bound, float rounding included.

``x · min(1, C/‖x‖)`` computed in float32 can land a few ulps above ``C``; a sensitivity
bound that is exceeded by 1e-7 is still exceeded. :func:`clip_l2` therefore computes the
norm in float64, scales, re-checks the float32 result's norm in float64 and shrinks any
row that is still above ``C`` by a few ulps until it is not.

The norm that counts is the float64 norm of the float32 values (exact to about 1e-16).
torch's float32 ``vector_norm`` is not a safe judge: summing a million similar squares in
float32 overstates the norm by up to about 4e-4 relative on a CPU (measured on a constant
vector of 921,600 entries, the size of the embedded model's LoRA update, whose Adam steps
make entries of similar size). Check norms in float64, as the server's validation does.
"""

from __future__ import annotations

import math

import torch

from drencoder.errors import ConfigError

_TINY = 1e-30  # keeps C/(norm + tiny) finite for an all-zero row, whose scale is then 1


def check_clip_norm(clip_norm: float, *, name: str = "clip_norm") -> float:
    """Return ``clip_norm`` as a float, or raise ``ConfigError`` unless it is finite and > 0."""
    value = float(clip_norm)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be finite and > 0, got {name}={clip_norm!r}")
    return value


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.double(), dim=-1)


def clip_cosine(raw_sum: torch.Tensor, clipped_sum: torch.Tensor) -> float:
    """Cosine between the sum of some vectors and the sum of the same vectors clipped: 1 when
    clipping kept the direction of their mean, below 0 when it turned it around (vectors of
    two groups that point opposite ways, clipped to one length, cancel). NaN when either
    sum is zero. For diagnostics: it reads the raw vectors, so it is not a DP release."""
    a, b = raw_sum.double(), clipped_sum.double()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else math.nan


def clip_l2(x: torch.Tensor, *, clip_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip a vector ``[d]`` or each row of a batch ``[n, d]`` to L2 norm at most ``clip_norm``.

    Returns ``(clipped, norms)``: ``clipped`` is float32 with the input's shape; ``norms`` are
    the pre-clip L2 norms (float64 scalar for ``[d]``, shape ``[n]`` for ``[n, d]``). The
    input is not modified. A non-finite entry raises ``ConfigError``: its row cannot be
    clipped to a meaningful value and silently zeroing it would hide a diverged client.
    """
    c = check_clip_norm(clip_norm)
    if x.ndim not in (1, 2):
        raise ConfigError(
            f"clip_l2 takes a vector [d] or a batch [n, d], got shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ConfigError("cannot clip a vector with NaN or infinite entries; check the update")
    x = x.to(torch.float32)
    norms = torch.linalg.vector_norm(x.double(), dim=-1)
    scale = torch.clamp(c / (norms + _TINY), max=1.0)
    clipped = (x.double() * scale.unsqueeze(-1)).to(torch.float32)
    # Rounding to float32 can leave a row a few ulps above c: shrink such rows by 4, 8,
    # 16, ... ulps until their (float64) norm is at most c.
    eps = torch.finfo(torch.float32).eps
    for step in range(8):
        over = _row_norms(clipped) > c
        if not bool(over.any()):
            break
        shrink = 1.0 - 4.0 * eps * 2**step
        factor = torch.where(over, shrink, 1.0).to(torch.float64)
        clipped = (clipped.double() * factor.unsqueeze(-1)).to(torch.float32)
    else:  # pragma: no cover - the shrinks add up to 1e-4 relative, far above rounding
        raise AssertionError("clip_l2 could not bring the norm under clip_norm")
    return clipped, norms
