"""The privacy-relevant choices of a run, as explicit enums whose values are config strings.

docs/design.md §2 (stage 2): every choice that changes what is released or
what the accountant may claim is a named value that appears in configs, logs and the ledger,
never a silent default hidden in code. Parsing an unknown string raises ``ConfigError``
listing the valid values: ``NoisePlacement("centre")`` fails loudly.
"""

from __future__ import annotations

from enum import StrEnum

from drencoder.errors import ConfigError


class ConfigEnum(StrEnum):
    """A ``StrEnum`` whose failed lookup is a ``ConfigError`` naming the valid values."""

    @classmethod
    def _missing_(cls, value: object) -> ConfigEnum:
        valid = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"{cls.__name__} must be one of {valid}, got {value!r}")


class NoisePlacement(ConfigEnum):
    """Who adds the Gaussian noise of stage 2 (docs/design.md §2, stage 2 step 5).

    ``local`` (default): each client adds N(0, σ²C²I) to its clipped latent before upload;
    the guarantee holds against the server itself, which knows who took part, so no
    amplification by sampling is claimed. ``central``: clients upload clipped latents and the
    aggregator adds N(0, σ²C²I) to their sum; valid only with a trusted aggregator or secure
    aggregation, and then Poisson sampling amplifies the guarantee of the released model.
    """

    LOCAL = "local"
    CENTRAL = "central"


class ClipPoint(ConfigEnum):
    """Where the update is clipped (docs/design.md §2 stage 2 step 4, §9 D8).

    ``latent`` (default, our reading): encode Δ, then clip and noise the latent z; the
    sensitivity is that of what is transmitted. ``update``: clip and noise Δ itself in the
    LoRA space (dimension d), then encode; encoding is then post-processing. Clipping Δ and
    noising the latent would NOT be a valid mechanism for a non-Lipschitz encoder, so the
    ``update`` choice means the whole Gaussian mechanism runs before encoding.
    """

    LATENT = "latent"
    UPDATE = "update"


class Aggregation(ConfigEnum):
    """How the server combines messages (docs/design.md §2 stage 2 step 6, §9 D10).

    ``mean_then_decode`` (default): Dec(mean of latents). ``decode_then_mean``: mean of
    Dec(latent) per client. Both are post-processing; they differ because Dec is nonlinear.
    """

    MEAN_THEN_DECODE = "mean_then_decode"
    DECODE_THEN_MEAN = "decode_then_mean"


class PrivacyUnit(ConfigEnum):
    """What one epsilon protects (docs/design.md §3, docs/privacy.md).

    ``client`` (default): one client's whole dataset; each round's update is clipped and
    noised (client-level DP). ``record``: one training example; every client runs DP-SGD
    on its own data (Poisson-sampled batches, per-example clipping, Gaussian noise per
    step) and accounts for its own records. The sent update is then post-processing of
    DP-SGD and is neither clipped nor noised again (the two are not stacked).
    """

    CLIENT = "client"
    RECORD = "record"


class RecordSpace(ConfigEnum):
    """Where record-level DP-SGD clips and noises each per-example gradient.

    ``lora`` (default): in the LoRA parameter space (dimension d of the trained matrices).
    ``latent``: in the codec's latent (DR-Encoder's idea at record level): each per-example
    gradient is encoded, clipped in the latent, the clipped latents summed and noised
    there (dimension k), and the noisy sum decoded into the gradient step. Needs a method
    with a codec (dp-random-projection, dr-encoder).
    """

    LORA = "lora"
    LATENT = "latent"


class Sampling(ConfigEnum):
    """How the server picks the clients of a round (docs/design.md §2 stage 2 step 1).

    ``poisson`` (default): every client takes part independently with probability q; this is
    what the amplification-by-sampling analyses (RDP, PLD, GDP CLT) assume. ``fixed``: exactly
    K clients; no amplification is claimed for it (see ``GaussianMechanism.dp_event``).
    """

    POISSON = "poisson"
    FIXED = "fixed"
