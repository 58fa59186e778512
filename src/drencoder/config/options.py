"""The run configuration's named choices (besides the mechanism's, in
:mod:`drencoder.mechanisms.options`, and the method, in :mod:`drencoder.config.methods`)."""

from __future__ import annotations

from drencoder.mechanisms.options import ConfigEnum


class Task(ConfigEnum):
    SENTIMENT = "sentiment"
    MMLU = "mmlu"


class Architecture(ConfigEnum):
    MLP = "mlp"
    CONV = "conv"


class CodecBasis(ConfigEnum):
    """Where DR-Encoder's uplink codec comes from (docs/codecs.md, "Structured codecs").

    ``autoencoder`` is the paper's method: an auto-encoder trained on samples of the
    stage-1 random prior. The others are linear subspace codecs (orthonormal encoder,
    transposed decoder) whose basis comes from privacy-free or accounted information.
    """

    AUTOENCODER = "autoencoder"
    RANDOM = "random"
    HISTORY = "history"
    PROXY = "proxy"
    SKETCH = "sketch"
    ENERGY = "energy"


class ServerOptimizer(ConfigEnum):
    """How the server applies the decoded mean update (post-processing, no privacy cost)."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
