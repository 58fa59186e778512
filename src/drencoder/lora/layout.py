"""A fixed, documented map between an adapter state dict and one flat vector.

Key order: the adapter's keys sorted in *natural* order, where runs of digits compare as
numbers (``layers.2`` before ``layers.10``) and the rest as text. For a PEFT LoRA adapter
this gives, per transformer layer in depth order, each target module's ``lora_A`` then
``lora_B``. Every matrix is flattened row-major (``torch.Tensor.reshape(-1)``). The flat
vector is float32.

The layout is plain data: it is saved as JSON next to anything that depends on it (the
auto-encoder, checkpoints), and ``Layout.check`` refuses a state dict that does not match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from drencoder.errors import ConfigError

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs numerically: ``a.2.b`` < ``a.10.b``."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(name))


@dataclass(frozen=True)
class Block:
    """One adapter matrix inside the flat vector: ``vec[offset : offset + size]``."""

    key: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


@dataclass(frozen=True)
class Layout:
    """Ordered blocks covering a flat vector of length ``dim`` without gaps."""

    blocks: tuple[Block, ...]

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> Layout:
        if not shapes:
            raise ConfigError("a layout needs at least one tensor, got an empty state dict")
        blocks, offset = [], 0
        for key in sorted(shapes, key=natural_key):
            shape = tuple(int(s) for s in shapes[key])
            blocks.append(Block(key=key, shape=shape, offset=offset))
            offset += math.prod(shape)
        return cls(blocks=tuple(blocks))

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> Layout:
        return cls.from_shapes({k: tuple(v.shape) for k, v in state.items()})

    @property
    def dim(self) -> int:
        last = self.blocks[-1]
        return last.offset + last.size

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(b.key for b in self.blocks)

    def check(self, state: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ConfigError`` unless ``state`` has exactly this layout's keys and shapes."""
        missing = [b.key for b in self.blocks if b.key not in state]
        extra = sorted(set(state) - set(self.keys), key=natural_key)
        if missing or extra:
            raise ConfigError(
                f"adapter state does not match the layout: missing {missing[:3]}"
                f"{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                f"{'...' if len(extra) > 3 else ''}"
            )
        for b in self.blocks:
            if tuple(state[b.key].shape) != b.shape:
                raise ConfigError(
                    f"adapter tensor {b.key!r} has shape {tuple(state[b.key].shape)}, "
                    f"the layout expects {b.shape}"
                )

    def flatten(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the state's tensors in layout order into one float32 vector."""
        self.check(state)
        return torch.cat([state[b.key].detach().reshape(-1).to(torch.float32) for b in self.blocks])

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`flatten` (returns views into ``vec``)."""
        if vec.ndim != 1 or vec.numel() != self.dim:
            raise ConfigError(
                f"flat vector has shape {tuple(vec.shape)}, the layout expects ({self.dim},)"
            )
        return {b.key: vec[b.slice].view(b.shape) for b in self.blocks}

    def restrict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of ``state`` this layout covers (e.g. the lora_B part of a full update).

        Extra keys are dropped; a missing key raises ``ConfigError``. Shapes are checked.
        """
        missing = [b.key for b in self.blocks if b.key not in state]
        if missing:
            raise ConfigError(
                f"state lacks {len(missing)} of the layout's keys, e.g. {missing[:3]}"
            )
        picked = {b.key: state[b.key] for b in self.blocks}
        self.check(picked)
        return picked

    def select(self, predicate) -> Layout:
        """A new layout with only the blocks whose key satisfies ``predicate``."""
        return Layout.from_shapes({b.key: b.shape for b in self.blocks if predicate(b.key)})

    def to_json(self) -> dict:
        return {"blocks": [{"key": b.key, "shape": list(b.shape)} for b in self.blocks]}

    @classmethod
    def from_json(cls, data: Mapping) -> Layout:
        try:
            shapes = {b["key"]: tuple(b["shape"]) for b in data["blocks"]}
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed layout JSON: {exc!r}") from exc
        return cls.from_shapes(shapes)
