"""What only a simulation can measure about its clients, and what the run says about it.

Clients in the simulator attach raw measurements to their result (``ClientResult.
diagnostics``: training loss, update norm, and what clipping did); deployed clients never
compute them. :func:`mean_diagnostics` reduces them to one row part per round, written
under ``not_covered_by_epsilon`` (they read raw client data and no ε covers them), and
:func:`clip_warning` words the warning a run gives when clipping lost the direction of the
mean.
"""

from __future__ import annotations

import math

import torch

from drencoder.mechanisms import clip_cosine
from drencoder.reporting.schema import Diagnostics

CLIP_COSINE_WARNING = 0.5
"""Simulation only: warn once when the round's clipped mean keeps less than this cosine
with the unclipped one (docs/results.md: record-level DP-SGD at C = 0.5 and clients
holding one review each both had their mean turned around, and collapsed)."""


def clip_warning(t: int, diagnostics: Diagnostics) -> str | None:
    """The warning for a round whose clipping lost the mean's direction, else None."""
    cosine = diagnostics.get("clip_cosine")
    if cosine is None or cosine >= CLIP_COSINE_WARNING:
        return None
    share = diagnostics.get("clipped_fraction")
    clipped = "" if share is None else f" (DP-SGD clipped {share:.0%} of the per-example gradients)"
    return (
        f"round {t}: the clipped mean kept cosine {cosine:.2f} with the unclipped mean"
        f"{clipped}. Clipped to one length, vectors that pull opposite ways cancel and the "
        "mean can lose or reverse its direction: a privacy.clip_norm above most of their "
        "norms, or (client level) several examples per client, may learn better "
        "(benchmarks/clip_signal.py measures it; docs/results.md)"
    )


def mean_diagnostics(diagnostics: list[dict]) -> Diagnostics:
    """The mean over clients of each simulation-only diagnostic (see
    :data:`~drencoder.reporting.schema.NOT_COVERED`)."""
    out: Diagnostics = {}
    losses = [d["train_loss"] for d in diagnostics if "train_loss" in d]
    if losses:
        out["train_loss"] = sum(losses) / len(losses)
    norms = [d["update_norm"] for d in diagnostics if "update_norm" in d]
    if norms:
        out["update_norm"] = sum(norms) / len(norms)
    clipped = [d["clipped_fraction"] for d in diagnostics if "clipped_fraction" in d]
    if clipped:
        out["clipped_fraction"] = sum(clipped) / len(clipped)
    # Client level: the round's clipped mean against its unclipped mean; record level: the
    # clients' own per-step cosines, averaged.
    pairs = [d["clip_input"] for d in diagnostics if "clip_input" in d]
    cosines = [d["clip_cosine"] for d in diagnostics if "clip_cosine" in d]
    if pairs:
        raw = torch.zeros(pairs[0][0].numel(), dtype=torch.float64)
        kept = torch.zeros_like(raw)
        for x, scale in pairs:
            raw += x.double()
            kept += scale * x.double()
        cosine = clip_cosine(raw, kept)
        if math.isfinite(cosine):
            out["clip_cosine"] = cosine
    elif cosines:
        out["clip_cosine"] = sum(cosines) / len(cosines)
    recon = [d["reconstruction"] for d in diagnostics if "reconstruction" in d]
    if recon:
        out["reconstruction"] = {
            "rel_error": sum(r[0] for r in recon) / len(recon),
            "cosine": sum(r[1] for r in recon) / len(recon),
        }
    return out
