"""Clipping, the one place DP noise is drawn, and the client-level Gaussian mechanism.

Mechanisms describe themselves with ``dp_accounting`` events; composing them into ε is the
job of :mod:`drencoder.accounting` (mechanisms describe, the ledger accounts).
"""

from drencoder.mechanisms.clipping import check_clip_norm, clip_cosine, clip_l2
from drencoder.mechanisms.gaussian import GaussianMechanism, check_noise_multiplier
from drencoder.mechanisms.noise import gaussian_noise, noise_generator, reseed_from_entropy
from drencoder.mechanisms.options import (
    Aggregation,
    ClipPoint,
    ConfigEnum,
    NoisePlacement,
    PrivacyUnit,
    RecordSpace,
    Sampling,
)

__all__ = [
    "Aggregation",
    "ClipPoint",
    "ConfigEnum",
    "GaussianMechanism",
    "NoisePlacement",
    "PrivacyUnit",
    "RecordSpace",
    "Sampling",
    "check_clip_norm",
    "check_noise_multiplier",
    "clip_cosine",
    "clip_l2",
    "gaussian_noise",
    "noise_generator",
    "reseed_from_entropy",
]
