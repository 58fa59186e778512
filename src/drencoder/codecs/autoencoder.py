"""Random-prior auto-encoder codecs (DR-Encoder stage 1; docs/codecs.md).

Two networks behind one :class:`AutoencoderCodec` base, both with latent size set by the
compression ratio (default 1/64) and trained only on synthetic prior samples
(:func:`drencoder.codecs.training.train_autoencoder`):

- :class:`MlpAutoencoderCodec` (``mlp-autoencoder``): the zero-padded flat vector is cut into
  chunks of ``chunk_size`` (default 4096), one MLP ``chunk -> hidden -> k_c`` is shared by
  all chunks, decoder mirrored. Same chunking as the random projection, so both baselines
  have the same latent size k. Parameters do not grow with d.
- :class:`ConvAutoencoderCodec` (``conv-autoencoder``): the predecessor's 2-D convolutional
  auto-encoder over an [H, W] grid filled row-major with the flat vector (zero-padded; H and
  W multiples of 2^stages, the grid near square unless ``width`` is given). ``stages``
  stride-2 stages shrink H·W by 4^stages, so ``latent_channels = ratio · 4^stages`` must be
  a whole number (1/64: 3 stages → 1 channel, 4 → 4, 6 → 64 as in CG-FedLLM).

Normalisation (a choice the paper leaves open; docs/codecs.md), :class:`Normalization`:

- ``block`` (default): per layout block, subtract the prior's mean and divide by its std
  before encoding; undo after decoding. LoRA updates are O(1e-3) and their blocks differ
  in scale; standardised inputs are O(1), which is what the networks' initialisation and
  Adam's step size assume, and every chunk looks alike to the shared encoder. Latent norms
  (hence the clip norm C) are then on the standardised scale.
- ``global``: divide everything by one number, the prior's root mean square, keeping the
  blocks' relative scales (the encoder may then favour high-variance blocks).
- ``none``: raw values.

The shift and scale come from the pooled statistics (already released, so public); scales
are floored at 1e-6 × the largest so a degenerate block cannot blow up its inputs.
Training minimises MSE in the normalised space (zero padding included: the networks learn
to return zeros there, and the padding is cut off after decoding).

Weights are initialised inside ``torch.random.fork_rng`` from a seed drawn from the
caller's generator: the global RNG is left untouched and the init is reproducible.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from drencoder.codecs.base import (
    DEFAULT_COMPRESSION_RATIO,
    Codec,
    check_compression_ratio,
    latent_dim_for,
    register_codec,
)
from drencoder.codecs.chunking import Chunker
from drencoder.codecs.networks import ChunkMLP, ConvAutoencoder
from drencoder.errors import CheckpointError, ConfigError
from drencoder.lora.layout import Layout
from drencoder.mechanisms.options import ConfigEnum
from drencoder.prior.sampler import PriorSampler


class Normalization(ConfigEnum):
    """How auto-encoder inputs are scaled by the stage-1 statistics (module docstring)."""

    BLOCK = "block"
    GLOBAL = "global"
    NONE = "none"


def _positive_int(value, name: str, *, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def normalization_for(
    sampler: PriorSampler, normalization: Normalization
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block ``(shift, scale)`` for ``normalization`` under the sampler's prior."""
    normalization = Normalization(normalization)
    mean, std = sampler.block_moments()
    n = mean.numel()
    if normalization is Normalization.NONE:
        return torch.zeros(n), torch.ones(n)
    if normalization is Normalization.GLOBAL:
        sizes = torch.tensor([b.size for b in sampler.layout.blocks], dtype=torch.float64)
        rms = math.sqrt(
            float((sizes * (std.double() ** 2 + mean.double() ** 2)).sum() / sizes.sum())
        )
        return torch.zeros(n), torch.full((n,), max(rms, 1e-30))
    floor = max(float(std.max()) * 1e-6, 1e-30)
    return mean.clone(), std.clamp(min=floor)


class AutoencoderCodec(Codec):
    """Shared plumbing: normalisation, weight init, save/load. Subclasses shape the input."""

    network: nn.Module
    encoder_only: bool = False

    def __init__(
        self,
        *,
        layout: Layout,
        compression_ratio: float,
        normalization: Normalization,
        shift: torch.Tensor,
        scale: torch.Tensor,
        init_seed: int,
    ) -> None:
        self.layout = layout
        self.compression_ratio = check_compression_ratio(compression_ratio)
        self.normalization = Normalization(normalization)
        self.init_seed = int(init_seed)
        nb = len(layout.blocks)
        self.shift = torch.as_tensor(shift, dtype=torch.float32).reshape(-1).clone()
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).clone()
        if self.shift.numel() != nb or self.scale.numel() != nb:
            raise ConfigError(f"shift and scale need one value per layout block ({nb})")
        if not (torch.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise ConfigError("normalisation scales must be finite and > 0")
        sizes = torch.tensor([b.size for b in layout.blocks], dtype=torch.long)
        self._shift_e = torch.repeat_interleave(self.shift, sizes)
        self._scale_e = torch.repeat_interleave(self.scale, sizes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            self.network = self._build_network()
        self.network.eval()

    @classmethod
    def for_prior(cls, sampler: PriorSampler, *, generator: torch.Generator, **options):
        """A fresh, untrained codec for ``sampler``'s layout and prior (see subclasses)."""
        if not isinstance(sampler, PriorSampler):
            raise ConfigError(f"for_prior needs a PriorSampler, got {type(sampler).__name__}")
        normalization = Normalization(options.pop("normalization", Normalization.BLOCK))
        shift, scale = normalization_for(sampler, normalization)
        init_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return cls(
            layout=sampler.layout,
            normalization=normalization,
            shift=shift,
            scale=scale,
            init_seed=init_seed,
            **options,
        )

    @abstractmethod
    def _build_network(self) -> nn.Module: ...

    @abstractmethod
    def _to_network(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[n, d]`` -> the encoder's input."""

    @abstractmethod
    def _from_network(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """The decoder's output -> normalised ``[n, d]``."""

    @abstractmethod
    def _latent_shape(self, n: int) -> tuple[int, ...]: ...

    @abstractmethod
    def _arch_config(self) -> dict[str, Any]: ...

    @abstractmethod
    def default_samples_per_step(self) -> int:
        """Prior samples per training step when the caller does not say."""

    @property
    def input_dim(self) -> int:
        return self.layout.dim

    @property
    def device(self) -> torch.device:
        return self._shift_e.device

    def to(self, device: torch.device | str) -> AutoencoderCodec:
        self.network.to(device)
        self._shift_e, self._scale_e = self._shift_e.to(device), self._scale_e.to(device)
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder network sees for updates ``x`` ``[n, d]`` (normalised, shaped)."""
        return self._to_network((x - self._shift_e) / self._scale_e)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """MSE between the prepared input and its reconstruction (with autograd)."""
        inp = self.prepare(x)
        out = self.network.decoder(self.network.encoder(inp))
        return torch.mean((out - inp) ** 2)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.encoder(self.prepare(x)).reshape(x.shape[0], self.latent_dim)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.encoder_only:
            raise ConfigError(
                f"this {self.name} codec holds only the encoder (a client's copy) and "
                "cannot decode; decode on the server, which keeps the whole codec"
            )
        n = z.shape[0]
        y = self._from_network(self.network.decoder(z.reshape(self._latent_shape(n))), n)
        return y * self._scale_e + self._shift_e

    def config(self) -> dict[str, Any]:
        return {
            "layout": self.layout.to_json(),
            "compression_ratio": self.compression_ratio,
            "normalization": self.normalization.value,
            "init_seed": self.init_seed,
            "input_dim": self.input_dim,
            "latent_dim": self.latent_dim,
            **self._arch_config(),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {"shift": self.shift, "scale": self.scale}
        tensors.update({f"network.{k}": v for k, v in self.network.state_dict().items()})
        return tensors

    @classmethod
    def from_saved(
        cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> AutoencoderCodec:
        arch = {k: config[k] for k in cls._arch_keys}
        codec = cls(
            layout=Layout.from_json(config["layout"]),
            compression_ratio=config["compression_ratio"],
            normalization=config["normalization"],
            shift=tensors["shift"],
            scale=tensors["scale"],
            init_seed=config["init_seed"],
            **arch,
        )
        weights = {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
        if any(k.startswith("decoder.") for k in weights):
            codec.network.load_state_dict(weights, strict=True)
            return codec
        # An encoder-only state (``encoder_state_dict``): what a client receives.
        result = codec.network.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("decoder.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"encoder state does not fit {cls.name}: missing {missing}, unexpected "
                f"{list(result.unexpected_keys)}; send codec.encoder_state_dict() of the "
                "same codec"
            )
        codec.encoder_only = True
        return codec


@register_codec
class MlpAutoencoderCodec(AutoencoderCodec):
    """Chunked MLP auto-encoder: one ``chunk -> hidden -> k_c`` MLP shared by all chunks."""

    name = "mlp-autoencoder"
    _arch_keys = ("chunk_size", "hidden")

    def __init__(
        self,
        *,
        layout: Layout,
        compression_ratio: float = DEFAULT_COMPRESSION_RATIO,
        chunk_size: int = 4096,
        hidden: int = 256,
        normalization: Normalization = Normalization.BLOCK,
        shift: torch.Tensor,
        scale: torch.Tensor,
        init_seed: int,
    ) -> None:
        chunk_size = min(_positive_int(chunk_size, "chunk_size"), layout.dim)
        self.chunker = Chunker(input_dim=layout.dim, chunk_size=chunk_size)
        self.chunk_latent = latent_dim_for(chunk_size, compression_ratio=compression_ratio)
        self.hidden = _positive_int(hidden, "hidden")
        super().__init__(
            layout=layout,
            compression_ratio=compression_ratio,
            normalization=normalization,
            shift=shift,
            scale=scale,
            init_seed=init_seed,
        )

    def _build_network(self) -> nn.Module:
        return ChunkMLP(
            chunk_size=self.chunker.chunk_size, hidden=self.hidden, latent=self.chunk_latent
        )

    @property
    def latent_dim(self) -> int:
        return self.chunker.n_chunks * self.chunk_latent

    def _to_network(self, x: torch.Tensor) -> torch.Tensor:
        return self.chunker.split(x)

    def _from_network(self, y: torch.Tensor, n: int) -> torch.Tensor:
        return self.chunker.merge(y, n)

    def _latent_shape(self, n: int) -> tuple[int, ...]:
        return (n * self.chunker.n_chunks, self.chunk_latent)

    def _arch_config(self) -> dict[str, Any]:
        return {"chunk_size": self.chunker.chunk_size, "hidden": self.hidden}

    def default_samples_per_step(self) -> int:
        # At least 256 chunk rows per step: two samples (450 chunks) at d = 921,600.
        return max(1, math.ceil(256 / self.chunker.n_chunks))


@register_codec
class ConvAutoencoderCodec(AutoencoderCodec):
    """CG-FedLLM-style 2-D convolutional auto-encoder over an [H, W] grid of the vector."""

    name = "conv-autoencoder"
    _arch_keys = ("stages", "channels", "residual_blocks", "width")

    def __init__(
        self,
        *,
        layout: Layout,
        compression_ratio: float = DEFAULT_COMPRESSION_RATIO,
        stages: int = 4,
        channels: int = 16,
        residual_blocks: int = 1,
        width: int | None = None,
        normalization: Normalization = Normalization.BLOCK,
        shift: torch.Tensor,
        scale: torch.Tensor,
        init_seed: int,
    ) -> None:
        self.stages = _positive_int(stages, "stages", minimum=2)
        self.channels = _positive_int(channels, "channels")
        self.residual_blocks = _positive_int(residual_blocks, "residual_blocks", minimum=0)
        ratio = check_compression_ratio(compression_ratio)
        latent_channels = ratio * 4**self.stages
        if abs(latent_channels - round(latent_channels)) > 1e-9 or round(latent_channels) < 1:
            raise ConfigError(
                f"compression_ratio · 4^stages must be a whole number of latent channels, got "
                f"{ratio} · 4^{self.stages} = {latent_channels}; choose stages so that it is "
                f"(1/64: stages 3, 4, 5 or 6)"
            )
        self.latent_channels = round(latent_channels)
        side = 2**self.stages
        d = layout.dim
        if width is None:
            width = side * math.ceil(math.sqrt(d) / side)
        self.width = _positive_int(width, "width")
        if self.width % side:
            raise ConfigError(f"width must be a multiple of 2^stages = {side}, got width={width}")
        self.height = side * math.ceil(math.ceil(d / self.width) / side)
        super().__init__(
            layout=layout,
            compression_ratio=ratio,
            normalization=normalization,
            shift=shift,
            scale=scale,
            init_seed=init_seed,
        )

    def _build_network(self) -> nn.Module:
        return ConvAutoencoder(
            stages=self.stages,
            channels=self.channels,
            latent_channels=self.latent_channels,
            residual_blocks=self.residual_blocks,
        )

    @property
    def latent_dim(self) -> int:
        return self.latent_channels * self.height * self.width // 4**self.stages

    def _to_network(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.height * self.width - x.shape[1]
        x = torch.nn.functional.pad(x, (0, pad))
        return x.reshape(x.shape[0], 1, self.height, self.width)

    def _from_network(self, y: torch.Tensor, n: int) -> torch.Tensor:
        return y.reshape(n, self.height * self.width)[:, : self.input_dim]

    def _latent_shape(self, n: int) -> tuple[int, ...]:
        side = 2**self.stages
        return (n, self.latent_channels, self.height // side, self.width // side)

    def _arch_config(self) -> dict[str, Any]:
        return {
            "stages": self.stages,
            "channels": self.channels,
            "residual_blocks": self.residual_blocks,
            "width": self.width,
            "height": self.height,
            "latent_channels": self.latent_channels,
        }

    def default_samples_per_step(self) -> int:
        return 4
