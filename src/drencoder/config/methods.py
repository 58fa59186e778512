"""The five methods of docs/design.md §5 as data: what each sends and whether it is private.

| method                 | codec on the uplink            | DP  | uplink blocks | stage 1 |
|------------------------|--------------------------------|-----|---------------|---------|
| fedavg-lora            | identity (full LoRA update)    | no  | A and B       | no      |
| dp-fedavg-lora         | identity, clipped + noised     | yes | A and B       | no      |
| ffa-lora-dp            | identity, clipped + noised     | yes | B only        | no      |
| dp-random-projection   | seeded random projection to k  | yes | A and B       | no      |
| dr-encoder             | random-prior auto-encoder to k | yes | A and B       | yes     |

One table drives every rule that depends on the method: the config checks
(:mod:`drencoder.config.loading`: whether a method has a budget, freezes ``lora_A``, has a
codec or takes ``codec.basis``), the codec a run builds, what it sends and whether it runs
stage 1 (:mod:`drencoder.federated.server`), and the grids of ``compare`` and ``audit``.
Adding a method is adding a row, not a branch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from drencoder.lora.settings import SentBlocks
from drencoder.mechanisms.options import ConfigEnum


class Method(ConfigEnum):
    """The five methods every comparison includes (docs/design.md §5)."""

    FEDAVG_LORA = "fedavg-lora"
    DP_FEDAVG_LORA = "dp-fedavg-lora"
    FFA_LORA_DP = "ffa-lora-dp"
    DP_RANDOM_PROJECTION = "dp-random-projection"
    DR_ENCODER = "dr-encoder"


class CodecKind(enum.StrEnum):
    IDENTITY = "identity"
    PROJECTION = "random-projection"
    AUTOENCODER = "autoencoder"


@dataclass(frozen=True)
class MethodSpec:
    method: Method
    codec: CodecKind
    private: bool
    sent: SentBlocks
    stage1: bool

    @property
    def has_codec(self) -> bool:
        """Whether the uplink is compressed to a latent (the record unit's latent option)."""
        return self.codec is not CodecKind.IDENTITY

    @property
    def takes_codec_basis(self) -> bool:
        """Whether ``codec.basis`` applies: DR-Encoder's codec options."""
        return self.codec is CodecKind.AUTOENCODER


METHODS: dict[Method, MethodSpec] = {
    spec.method: spec
    for spec in (
        MethodSpec(Method.FEDAVG_LORA, CodecKind.IDENTITY, False, SentBlocks.ALL, False),
        MethodSpec(Method.DP_FEDAVG_LORA, CodecKind.IDENTITY, True, SentBlocks.ALL, False),
        MethodSpec(Method.FFA_LORA_DP, CodecKind.IDENTITY, True, SentBlocks.B_ONLY, False),
        MethodSpec(Method.DP_RANDOM_PROJECTION, CodecKind.PROJECTION, True, SentBlocks.ALL, False),
        MethodSpec(Method.DR_ENCODER, CodecKind.AUTOENCODER, True, SentBlocks.ALL, True),
    )
}


def spec_for(method: Method | str) -> MethodSpec:
    return METHODS[Method(method)]
