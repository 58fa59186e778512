"""``LoraSettings``: the LoRA adapter every client trains, as a validated frozen dataclass.

Fields carry ``metadata={"help": ...}`` (shown by the CLI and config docs). Values are
checked in ``__post_init__``; a bad value raises ``ConfigError`` naming the field, the
value and the allowed range. ``target_modules`` may be given as a list (as TOML does) and
is stored as a tuple.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from drencoder.errors import ConfigError


class SentBlocks(StrEnum):
    """Which adapter matrices a client's update contains (what goes on the uplink).

    ``ALL``: every ``lora_A`` and ``lora_B`` (standard LoRA). ``B_ONLY``: only the
    ``lora_B`` matrices (FFA-LoRA: ``lora_A`` stays frozen at its seeded random init, which
    every party can regenerate, so it is never sent).
    """

    ALL = "all"
    B_ONLY = "b_only"

    @classmethod
    def parse(cls, value: str | SentBlocks) -> SentBlocks:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            raise ConfigError(f"sent must be one of {valid}, got sent={value!r}") from None


def _parse_layers(value) -> str:
    """The canonical form of ``layers``: ``"all"``, ``"top:N"`` (N >= 1) or ``"i,j,..."``
    (distinct layer indices >= 0, sorted)."""
    if isinstance(value, str):
        text = value.replace(" ", "").lower()
        head, _, count = text.partition(":")
        if text == "all":
            return "all"
        if head == "top" and count.isdigit() and int(count) >= 1:
            return f"top:{int(count)}"
        parts = text.split(",")
        if text and all(p.isdigit() for p in parts) and len(set(map(int, parts))) == len(parts):
            return ",".join(str(i) for i in sorted(map(int, parts)))
    raise ConfigError(
        "lora layers must be 'all', 'top:N' with N >= 1, or a comma-separated list of "
        f"distinct layer indices such as '28,29', got layers={value!r}"
    )


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; ``train_a=False`` selects FFA-LoRA."""

    rank: int = field(
        default=8,
        metadata={"help": "LoRA rank r of every adapted matrix (integer >= 1)."},
    )
    alpha: float = field(
        default=16.0,
        metadata={"help": "LoRA alpha; the update B@A is scaled by alpha / rank (> 0)."},
    )
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the LoRA input, in [0, 1). 0 (default) draws no random "
            "numbers; a positive value draws from the seeded scope of local training."
        },
    )
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"),
        metadata={
            "help": "Names (suffixes) of the linear layers that get an adapter, e.g. "
            "q_proj, k_proj, v_proj, o_proj for Llama/Qwen2/Mistral/Gemma attention."
        },
    )
    layers: str = field(
        default="all",
        metadata={
            "help": "Decoder layers that get adapters: 'all' (default), 'top:N' (the last N "
            "layers) or comma-separated layer indices ('28,29'). With adapters only above "
            "a frozen prefix, the prefix's hidden states are computed once per example and cached "
            "(model.prefix_cache), so training and scoring run only the adapted top."
        },
    )
    train_a: bool = field(
        default=True,
        metadata={
            "help": "Train lora_A as well as lora_B. false = FFA-LoRA: lora_A is frozen at "
            "its seeded random init and only lora_B is trained and sent."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora rank must be an integer >= 1, got rank={self.rank!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, int | float)
            or not math.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise ConfigError(f"lora alpha must be a finite number > 0, got alpha={self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ConfigError(
                f"lora dropout must be a number in [0, 1), got dropout={self.dropout!r}"
            )
        modules = self.target_modules
        if isinstance(modules, str) or not isinstance(modules, tuple | list):
            raise ConfigError(
                "lora target_modules must be a list of module names such as "
                f"['q_proj', 'v_proj'], got target_modules={modules!r}"
            )
        if not modules or not all(isinstance(m, str) and m.strip() == m and m for m in modules):
            raise ConfigError(
                "lora target_modules must be a non-empty list of non-empty names without "
                f"spaces, got target_modules={modules!r}"
            )
        if len(set(modules)) != len(modules):
            raise ConfigError(f"lora target_modules has duplicates, got target_modules={modules!r}")
        object.__setattr__(self, "layers", _parse_layers(self.layers))
        if not isinstance(self.train_a, bool):
            raise ConfigError(f"lora train_a must be true or false, got train_a={self.train_a!r}")
        object.__setattr__(self, "target_modules", tuple(modules))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))

    def layer_indices(self, num_layers: int) -> tuple[int, ...] | None:
        """The adapted decoder layers of a model with ``num_layers`` layers (None = all)."""
        if self.layers == "all":
            return None
        if self.layers.startswith("top:"):
            n = int(self.layers.split(":", 1)[1])
            if n > num_layers:
                raise ConfigError(
                    f"lora layers={self.layers!r} asks for more layers than the model's "
                    f"{num_layers}"
                )
            return tuple(range(num_layers - n, num_layers))
        indices = tuple(int(i) for i in self.layers.split(","))
        bad = [i for i in indices if i >= num_layers]
        if bad:
            raise ConfigError(
                f"lora layers {bad} do not exist: the model has layers 0..{num_layers - 1}"
            )
        return indices

    @property
    def scaling(self) -> float:
        """The factor PEFT applies to B@A: ``alpha / rank``."""
        return self.alpha / self.rank

    @property
    def sent(self) -> SentBlocks:
        """The uplink blocks these settings imply: all, or only lora_B for FFA-LoRA."""
        return SentBlocks.ALL if self.train_a else SentBlocks.B_ONLY
