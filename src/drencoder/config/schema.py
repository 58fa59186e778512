"""The run configuration's schema: frozen dataclasses, one per section, with help text
and the checks the loader applies (``gt``/``ge``/``lt``/``le``/``choices``), plus the presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drencoder.codecs.autoencoder import Normalization
from drencoder.codecs.training import DEFAULT_LR as AE_DEFAULT_LR
from drencoder.codecs.training import DEFAULT_STEPS as AE_DEFAULT_STEPS
from drencoder.config import rules
from drencoder.config.fields import changed_keys, check_fields
from drencoder.config.methods import Method
from drencoder.config.options import Architecture, CodecBasis, ServerOptimizer, Task
from drencoder.data.examples import LossOn
from drencoder.data.partition import Partitioning
from drencoder.lora.settings import LoraSettings
from drencoder.lora.training import TrainSettings
from drencoder.mechanisms.options import (
    Aggregation,
    ClipPoint,
    NoisePlacement,
    PrivacyUnit,
    RecordSpace,
    Sampling,
)
from drencoder.prior.pooling import Pooling
from drencoder.prior.release import StatisticsRelease


def _help(text: str, **checks: Any) -> dict[str, Any]:
    return {"help": text, **checks}


class _Section:
    """A config section checks its own fields when built (in Python or by the loader)."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ModelConfig(_Section):
    name: str = field(
        default="smollm2-135m",
        metadata=_help("Embedded model name (smollm2-135m, gemma3-270m) or a local HF folder."),
    )
    device: str = field(
        default="cpu", metadata=_help("Torch device: cpu, cuda, cuda:N.", pattern="device")
    )
    prefix_cache: str = field(
        default="disk",
        metadata=_help(
            "With adapters only on the top layers (lora.layers = 'top:N'), cache the frozen "
            "prefix's hidden states once per example and run only the top: disk (under the "
            "cache folder, reused by later runs), memory, or off. Exact either way.",
            choices=("disk", "memory", "off"),
        ),
    )


@dataclass(frozen=True)
class DataConfig(_Section):
    task: Task = field(default=Task.SENTIMENT, metadata=_help("sentiment or mmlu."))
    partition: Partitioning = field(
        default=Partitioning.IID,
        metadata=_help("How client data is split: iid, dirichlet, by_subject."),
    )
    dirichlet_alpha: float = field(
        default=0.5, metadata=_help("Concentration of the Dirichlet partition.", gt=0)
    )
    examples_per_client: int = field(
        default=64, metadata=_help("Fine-tuning examples each client holds.", ge=1)
    )
    max_length: int = field(
        default=96, metadata=_help("Tokens per training example (prompt end kept).", ge=8)
    )
    max_chars: int = field(
        default=160, metadata=_help("Sentiment texts are cut to this many characters.", ge=8)
    )
    batch_size: int = field(default=8, metadata=_help("Local batch size.", ge=1))
    loss_on: LossOn = field(
        default=LossOn.ANSWER,
        metadata=_help(
            "Training loss: the answer token over the whole vocabulary (answer), the "
            "answer letter against the other choices' letters only (letters), or every "
            "token (full)."
        ),
    )


@dataclass(frozen=True)
class EvalConfig(_Section):
    questions: int = field(
        default=64, metadata=_help("Fixed held-out questions scored (same set every time).", ge=1)
    )
    offset: int = field(
        default=0,
        metadata=_help(
            "Skip this many questions of the fixed held-out order first: offset = questions "
            "gives a second, disjoint evaluation set (for results on questions that tuning "
            "never saw).",
            ge=0,
        ),
    )
    every: int = field(
        default=1,
        metadata=_help("Score every N rounds; 0 = only before and after training.", ge=0),
    )
    n_shot: int = field(default=0, metadata=_help("Few-shot exemplars in MMLU prompts.", ge=0))
    batch_size: int = field(
        default=32,
        metadata=_help(
            "Questions per forward pass when scoring (the full-vocabulary output head is "
            "read once per batch, so small batches are slow on a CPU).",
            ge=1,
        ),
    )


@dataclass(frozen=True)
class SamplingConfig(_Section):
    scheme: Sampling = field(
        default=Sampling.POISSON, metadata=_help("poisson (rate q) or fixed (K per round).")
    )
    rate: float = field(
        default=1.0, metadata=_help("Poisson sampling rate q; 1 = every client.", gt=0, le=1)
    )
    per_round: int = field(
        default=4, metadata=_help("Clients per round with the fixed scheme.", ge=1)
    )


@dataclass(frozen=True)
class ServerConfig(_Section):
    lr: float = field(
        default=1.0, metadata=_help("Server learning rate applied to the decoded update.", gt=0)
    )
    optimizer: ServerOptimizer = field(
        default=ServerOptimizer.SGD,
        metadata=_help(
            "How the decoded mean update is applied: sgd (theta += lr * update), momentum "
            "(FedAvgM) or adam (FedAdam). Post-processing: no privacy cost. See "
            "docs/running.md."
        ),
    )
    momentum: float = field(
        default=0.9,
        metadata=_help(
            "Server momentum beta (momentum) or first-moment decay beta1 (adam).", ge=0, lt=1
        ),
    )
    beta2: float = field(
        default=0.99,
        metadata=_help("FedAdam second-moment decay beta2 (adam only).", ge=0, lt=1),
    )
    adaptivity: float = field(
        default=1e-3,
        metadata=_help(
            "FedAdam adaptivity tau, added to sqrt(v) in the denominator (adam only).", gt=0
        ),
    )


@dataclass(frozen=True)
class PrivacyConfig(_Section):
    unit: PrivacyUnit = field(
        default=PrivacyUnit.CLIENT,
        metadata=_help(
            "What epsilon protects: client (a client's whole dataset; its update is clipped "
            "and noised each round) or record (one example; every client runs DP-SGD on its "
            "own data and its update is sent without client-level noise). With record, "
            "noise_multiplier and clip_norm are DP-SGD's, per example and step. See "
            "docs/privacy.md."
        ),
    )
    record_space: RecordSpace = field(
        default=RecordSpace.LORA,
        metadata=_help(
            "Record unit only: clip and noise each per-example gradient in the LoRA space "
            "(lora) or in the codec's latent (latent: encode, clip, sum, noise, decode; "
            "dp-random-projection and dr-encoder only)."
        ),
    )
    record_group: int = field(
        default=1,
        metadata=_help(
            "Record unit only: clip per group of this many consecutive examples of a "
            "client (micro-batch clipping): whole groups are Poisson-sampled, each group's "
            "summed gradient is clipped to C. 1 = per example. With groups epsilon is "
            "stated under replace-one of one example. See docs/privacy.md.",
            ge=1,
        ),
    )
    noise_multiplier: float | None = field(
        default=None,
        metadata=_help("sigma; none = calibrate from target_epsilon for the planned run.", gt=0),
    )
    clip_norm: float = field(default=1.0, metadata=_help("L2 clip norm C of what is noised.", gt=0))
    placement: NoisePlacement = field(
        default=NoisePlacement.LOCAL, metadata=_help("local (client adds noise) or central.")
    )
    clip_point: ClipPoint = field(
        default=ClipPoint.LATENT, metadata=_help("Clip the latent (default) or the update.")
    )
    aggregation: Aggregation = field(
        default=Aggregation.MEAN_THEN_DECODE,
        metadata=_help("mean_then_decode (default) or decode_then_mean."),
    )
    accountant: str = field(
        default="pld",
        metadata=_help(
            "Accountant for the budget stop and calibration.", choices=("gdp", "rdp", "pld")
        ),
    )
    relation: str = field(
        default="auto",
        metadata=_help(
            "Neighbouring relation epsilon is stated under: auto (replace-one, except "
            "add-remove for central noise with Poisson sampling), add-remove or replace-one. "
            "See docs/privacy.md.",
            choices=("auto", "add-remove", "replace-one"),
        ),
    )
    clip_quantile: float | None = field(
        default=None,
        metadata=_help(
            "Adaptive clipping: target quantile gamma of the clients' norms that the clip "
            "norm tracks (e.g. 0.5); clip_norm is then the initial C. none = fixed clip "
            "norm. Central placement only; a noisy count of unclipped clients is released and "
            "accounted each round. See docs/privacy.md.",
            gt=0,
            lt=1,
        ),
    )
    clip_lr: float = field(
        default=0.2,
        metadata=_help(
            "Adaptive clipping: learning rate eta_C of C <- C * exp(-eta_C (b - gamma)).", gt=0
        ),
    )
    clip_count_noise: float | None = field(
        default=None,
        metadata=_help(
            "Adaptive clipping: std sigma_b of the noise on the count of unclipped clients; "
            "none = expected clients per round / 20.",
            gt=0,
        ),
    )
    reproducible_noise: bool = field(
        default=False,
        metadata=_help(
            "Research only: draw the DP noise and the Poisson participation from generators "
            "seeded by seed, so a run can be repeated exactly. Anyone who knows the seed can "
            "then regenerate the noise and subtract it: the printed epsilon does not hold "
            "against them. Default false: OS entropy. See docs/threat-model.md."
        ),
    )


@dataclass(frozen=True)
class Stage1Config(_Section):
    warmup_steps: int | None = field(
        default=None,
        metadata=_help("Local warm-up steps per epoch; none = local.steps.", ge=1),
    )
    epochs: int = field(
        default=1, metadata=_help("Warm-up epochs (one statistics set each).", ge=1)
    )
    release_noise: bool = field(
        default=StatisticsRelease.enabled,
        metadata=_help("Clip and noise the statistics before upload (DP)."),
    )
    clip_norm: float = field(
        default=StatisticsRelease.clip_norm,
        metadata=_help("Clip norm of a client's statistics vector.", gt=0),
    )
    noise_multiplier: float = field(
        default=StatisticsRelease.noise_multiplier,
        metadata=_help("Noise multiplier of the statistics release.", gt=0),
    )
    pooling: Pooling = field(default=Pooling.MEAN, metadata=_help("mean or mixture."))


@dataclass(frozen=True)
class CodecConfig(_Section):
    compression_ratio: float = field(
        default=1 / 64, metadata=_help("Latent size k = ratio x adapter dim.", gt=0, le=1)
    )
    architecture: Architecture = field(
        default=Architecture.MLP, metadata=_help("Auto-encoder: mlp (chunked) or conv.")
    )
    chunk_size: int = field(
        default=4096, metadata=_help("Chunk size of the MLP auto-encoder and projection.", ge=8)
    )
    normalization: Normalization = field(
        default=Normalization.GLOBAL,
        metadata=_help(
            "Auto-encoder input scaling from the prior: global (one scale), block "
            "(per-matrix mean/std) or none."
        ),
    )
    train_steps: int = field(
        default=AE_DEFAULT_STEPS,
        metadata=_help("Auto-encoder training steps on prior samples.", ge=1),
    )
    lr: float = field(
        default=AE_DEFAULT_LR, metadata=_help("Auto-encoder Adam learning rate.", gt=0)
    )
    basis: CodecBasis = field(
        default=CodecBasis.AUTOENCODER,
        metadata=_help(
            "dr-encoder's codec: autoencoder (the paper's random-prior auto-encoder), or a "
            "subspace codec per LoRA matrix: random, history (top directions of earlier "
            "decoded DP aggregates; free), proxy (the server's updates on public examples; "
            "free), sketch (a DP low-rank sketch released in stage 1; charged), energy "
            "(latent split by the DP stage-1 statistics' block energies; charged). See "
            "docs/codecs.md."
        ),
    )
    history_rounds: int = field(
        default=4,
        metadata=_help("history: decoded aggregates of this many latest rounds span it.", ge=1),
    )
    refresh_every: int = field(
        default=1,
        metadata=_help("history and proxy: rebuild the subspace every N rounds.", ge=1),
    )
    proxy_examples: int = field(
        default=64,
        metadata=_help(
            "proxy: public examples the server holds (held-out items of the task that no "
            "client holds and that are not scored).",
            ge=1,
        ),
    )
    proxy_updates: int = field(
        default=8,
        metadata=_help(
            "proxy: updates the server computes per refresh (local.steps steps each, from "
            "the current global adapter).",
            ge=1,
        ),
    )
    sketch_width: int = field(
        default=2,
        metadata=_help(
            "sketch: columns s per LoRA matrix (the short side r is sketched down to s).", ge=1
        ),
    )
    sketch_clip_norm: float = field(
        default=1.0, metadata=_help("sketch: L2 clip norm of a client's whole sketch.", gt=0)
    )
    sketch_noise_multiplier: float = field(
        default=5.0, metadata=_help("sketch: noise multiplier of the sketch release.", gt=0)
    )


@dataclass(frozen=True)
class CheckpointConfig(_Section):
    every: int = field(default=1, metadata=_help("Checkpoint every N rounds.", ge=1))


@dataclass(frozen=True)
class RunConfig:
    method: Method = field(default=Method.DR_ENCODER, metadata=_help("Which method to run."))
    rounds: int = field(default=6, metadata=_help("Federated rounds.", ge=1))
    clients: int = field(default=4, metadata=_help("Number of clients.", ge=1))
    target_epsilon: float | None = field(
        default=8.0, metadata=_help("Privacy budget; none = no budget stop.", gt=0)
    )
    delta: float = field(default=1e-5, metadata=_help("Target delta.", gt=0, lt=1))
    seed: int = field(default=0, metadata=_help("Seed of every random choice of the run.", ge=0))
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    local: TrainSettings = field(default_factory=TrainSettings)
    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    codec: CodecConfig = field(default_factory=CodecConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        """Check every field and every cross-field rule (:mod:`drencoder.config.rules`),
        however the config was built; apply what the method fixes."""
        check_fields(self)
        for name, value in rules.normalized(self).items():
            object.__setattr__(self, name, value)
        rules.check(self, changed_keys(self))


# Cross-device: many clients with a few examples each, Poisson sampling, central noise,
# FedAdam at the server; LoRA on the top layer only, trained and scored on cached prefix states
# with the letters loss. Gemma 3 270M: SmolLM2-135M reads Chinese as bytes and its top layer
# does not learn this task (docs/results.md).
_CROSS_DEVICE: dict[str, Any] = {
    "method": "dp-fedavg-lora",
    "model.name": "gemma3-270m",
    "lora.layers": "top:1",
    "data.loss_on": "letters",
    "data.max_length": 64,
    "data.max_chars": 64,
    "data.batch_size": 2,
    "local.optimizer": "sgd",
    "local.lr": 1.0,
    "local.steps": 1,
    "server.optimizer": "adam",
    # Tuned for the private runs: the noise's variance sits in FedAdam's second moment and
    # shortens its steps (at 0.003 they learned less; without DP 0.003 stays best).
    "server.lr": 0.006,
    "privacy.placement": "central",
    "privacy.clip_norm": 0.5,
    "eval.questions": 1000,
    # The presets were tuned on the first 1,000 questions of the held-out order; they are
    # scored on the next 1,000, which no tuning run saw.
    "eval.offset": 1000,
}

# Presets: dotted overrides applied before the config file.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "smoke": {
        "rounds": 2,
        "clients": 2,
        "data.examples_per_client": 8,
        "data.max_length": 48,
        "data.max_chars": 60,
        "data.batch_size": 4,
        "eval.questions": 8,
        "local.steps": 1,
        "codec.train_steps": 30,
    },
    # Two reviews per client: a one-review client's update is a single example's gradient,
    # and clipped to C those turn the mean around as in record-level DP (docs/results.md).
    "cross-device": {
        **_CROSS_DEVICE,
        "clients": 5000,
        "data.examples_per_client": 2,
        "sampling.rate": 0.04,
        "rounds": 40,
        "eval.every": 0,
    },
    # Cross-silo with record-level DP: four clients with 3,000 examples each, all in every
    # round; each runs one DP-SGD step per round on a Poisson batch (q = 0.1), epsilon per
    # record, client updates sent without client-level noise. FFA-LoRA on v and o only (the
    # fewest coordinates that carry the gradient: the noise norm grows with their square
    # root); clipped per group of two examples at C = 0.5 (a single example's gradient
    # clipped that short loses the mean's direction; a pair mixes the answers and keeps it,
    # docs/results.md), epsilon under replace-one of an example; FedAdam 0.03, 20 rounds.
    "cross-silo": {
        **{k: v for k, v in _CROSS_DEVICE.items() if k != "privacy.placement"},
        "method": "ffa-lora-dp",
        "lora.target_modules": ["v_proj", "o_proj"],
        "clients": 4,
        "data.examples_per_client": 3000,
        "data.batch_size": 300,
        "sampling.rate": 1.0,
        "rounds": 20,
        "privacy.unit": "record",
        "privacy.record_group": 2,
        "privacy.clip_norm": 0.5,
        "server.lr": 0.03,
        "eval.every": 0,
    },
    # What `make demo` runs: the cross-device preset, smaller and shorter.
    "demo": {
        **_CROSS_DEVICE,
        "clients": 1000,
        "data.examples_per_client": 2,
        "sampling.rate": 0.1,
        "rounds": 40,
        "eval.every": 0,
    },
}
