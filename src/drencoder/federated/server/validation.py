"""Server-side checks of client messages before aggregation.

A client message is the latent ``z`` a client uploads (docs/design.md §2 stage 2 steps 3-5). The
server cannot trust it: a buggy or malicious client, or a damaged transport, can send
anything. :func:`check_message` raises :class:`PayloadRejected` with the reason for the
first failed check, in this order:

1. **size**: more than ``max_bytes`` bytes (checked first, before the content is looked at);
2. **type**: not a ``torch.Tensor``, or not ``float32``;
3. **shape**: not 1-D of length ``latent_dim``;
4. **finite**: any NaN or infinity;
5. **norm** (when ``clip_norm`` is given):

   - clipping without local noise (``central`` placement, or a method whose clients only
     clip): ``‖z‖ ≤ C·(1 + 1e-5)``, the tolerance covering float32 rounding of the clip;
   - clipping with ``local`` noise: z = c + n with ‖c‖ ≤ C and n ~ N(0, σ²C²·I_k), so
     ``‖z‖ ≤ C + σC·χ_k``. χ_k is 1-Lipschitz in the Gaussian vector and E[χ_k] ≤ √k, so by
     Gaussian concentration (e.g. Boucheron, Lugosi, Massart 2013, Thm 5.6)
     ``P(χ_k ≥ √k + t) ≤ exp(−t²/2)``. With ``t = √(2·ln(1/p))`` and ``p = 1e-9``
     (t ≈ 6.44), a valid message is rejected with probability below 1e-9, whatever k is.
     The bound is ``C·(1 + σ·(√k + t))·(1 + 1e-5)``. It is loose by design: it stops
     absurd norms (a client trying to dominate the mean), not a subtle attacker, who can
     always send any vector of plausible norm.

   ``clip_norm`` is the round's clip norm, which moves from round to round with adaptive
   clipping (``privacy.clip_quantile``): the server passes the C the round was sent with.
   Pass ``clip_norm=None`` when no norm bound holds for the latent: no clipping
   (``fedavg-lora``), or clipping before a non-identity encoder (``clip_point = update``),
   which does not preserve norms (see :func:`message_limits`).

With adaptive clipping every reply also carries the client's clip indicator, which must be
exactly 0 or 1 (``bad-clip-bit`` otherwise; checked by the server's ``collect`` after the
message checks). A reply rejected for either reason stays out of both the update sum and
the count.

**Privacy ledger.** A rejected message was still released by its client: with local noise
the client ran the mechanism and sent a noised value, which the server and any
eavesdropper saw. Rejection is post-processing of that release, so the ledger charges a
rejected client exactly as if its message had been aggregated (conservative: nothing is
refunded). With central noise the server noises the sum of the accepted messages; the
event charged is unchanged, since dropping a client's contribution can only lower the
sensitivity. The server records ``rejected: {client: code}`` (a fixed code) in the round's
metrics row and logs each rejection, with its detail, at WARNING on the ``drencoder``
logger.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch

from drencoder.codecs import Codec, IdentityCodec
from drencoder.errors import DrencoderError
from drencoder.mechanisms import ClipPoint, GaussianMechanism, NoisePlacement

logger = logging.getLogger("drencoder")

FALSE_REJECTION = 1e-9
"""Probability bound of rejecting a valid locally-noised message for its norm."""
TAIL_T = math.sqrt(2 * math.log(1 / FALSE_REJECTION))
"""t with exp(−t²/2) = FALSE_REJECTION (≈ 6.44)."""
RELATIVE_TOLERANCE = 1e-5
"""Float32 rounding allowance on every norm bound."""


REJECTION_CODES = (
    "not-a-tensor",
    "oversized",
    "bad-dtype",
    "bad-shape",
    "non-finite",
    "norm-bound",
    "bad-clip-bit",
)
"""The fixed codes a rejection is recorded with in metrics. The detail (values computed
from the message, which with central noise is un-noised) goes to the server's log only."""


class PayloadRejected(DrencoderError):
    """A client message failed a server-side check; ``code`` is one of
    :data:`REJECTION_CODES`, the message names the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def norm_bound(
    *,
    clip_norm: float,
    noise_multiplier: float | None,
    placement: NoisePlacement | str,
    latent_dim: int,
) -> float:
    """The largest ``‖z‖`` accepted (see the module docstring for the derivation)."""
    placement = NoisePlacement(placement)
    bound = float(clip_norm)
    if placement is NoisePlacement.LOCAL and noise_multiplier:
        bound *= 1 + float(noise_multiplier) * (math.sqrt(latent_dim) + TAIL_T)
    return bound * (1 + RELATIVE_TOLERANCE)


def check_message(
    message: object,
    *,
    latent_dim: int,
    clip_norm: float | None,
    noise_multiplier: float | None,
    placement: NoisePlacement | str,
    max_bytes: int,
) -> None:
    """Raise :class:`PayloadRejected` unless ``message`` is a valid latent (module docstring)."""
    if not isinstance(message, torch.Tensor):
        raise PayloadRejected(
            "not-a-tensor",
            f"not a tensor (got {type(message).__name__}); a message must be a float32 tensor "
            f"of shape [{latent_dim}]",
        )
    size = message.numel() * message.element_size()
    if size > max_bytes:
        raise PayloadRejected("oversized", f"{size} bytes, the limit is {max_bytes} bytes")
    if message.dtype != torch.float32:
        raise PayloadRejected("bad-dtype", f"dtype {message.dtype}, expected torch.float32")
    if message.ndim != 1 or message.shape[0] != latent_dim:
        raise PayloadRejected("bad-shape", f"shape {list(message.shape)}, expected [{latent_dim}]")
    if not bool(torch.isfinite(message).all()):
        bad = int((~torch.isfinite(message)).sum())
        raise PayloadRejected("non-finite", f"{bad} of {latent_dim} values are NaN or infinite")
    if clip_norm is None:
        return
    bound = norm_bound(
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        placement=placement,
        latent_dim=latent_dim,
    )
    norm = float(message.detach().double().norm())
    if norm > bound:
        local = NoisePlacement(placement) is NoisePlacement.LOCAL and noise_multiplier
        how = (
            f"C·(1 + σ·(√k + {TAIL_T:.2f})) with C={clip_norm:g}, σ={noise_multiplier:g}, "
            f"k={latent_dim}"
            if local
            else f"the clip norm C={clip_norm:g}"
        )
        raise PayloadRejected("norm-bound", f"norm {norm:.6g} exceeds {bound:.6g} = {how}")


def accept_messages(
    messages: Mapping[int, object],
    *,
    latent_dim: int,
    clip_norm: float | None,
    noise_multiplier: float | None,
    placement: NoisePlacement | str,
    max_bytes: int,
) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
    """Split ``{client: message}`` into accepted messages and ``{client: code}``.

    Order is kept (accepted messages are aggregated in the order the clients were
    sampled). Every rejection is logged, with its detail, at WARNING on the ``drencoder``
    logger; the returned codes are fixed (:data:`REJECTION_CODES`).
    """
    accepted: dict[int, torch.Tensor] = {}
    rejected: dict[int, str] = {}
    for client, message in messages.items():
        try:
            check_message(
                message,
                latent_dim=latent_dim,
                clip_norm=clip_norm,
                noise_multiplier=noise_multiplier,
                placement=placement,
                max_bytes=max_bytes,
            )
        except PayloadRejected as exc:
            rejected[client] = exc.code
            logger.warning("message of client %s rejected: %s", client, exc)
        else:
            accepted[client] = message  # type: ignore[assignment]
    return accepted, rejected


def message_limits(
    codec: Codec, mechanism: GaussianMechanism | None, clip_point: ClipPoint | str
) -> dict:
    """The keyword arguments of :func:`check_message` for a run's codec and mechanism.

    The norm is checked only when the latent itself is clipped: ``clip_point = latent``,
    or any clip point with the identity codec (where the latent is the update).
    """
    clipped_latent = mechanism is not None and (
        ClipPoint(clip_point) is ClipPoint.LATENT or isinstance(codec, IdentityCodec)
    )
    return {
        "latent_dim": codec.latent_dim,
        "clip_norm": mechanism.clip_norm if clipped_latent else None,
        "noise_multiplier": mechanism.noise_multiplier if mechanism is not None else None,
        "placement": mechanism.placement if mechanism is not None else NoisePlacement.LOCAL,
        "max_bytes": codec.bytes_per_upload,
    }
