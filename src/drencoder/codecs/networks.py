"""The auto-encoder networks (``torch.nn``), kept apart from the codec plumbing.

Both expose ``.encoder`` and ``.decoder`` submodules. Tanh is the activation, as in the
predecessor CG-FedLLM; the latent itself is linear (no activation), so its
scale is free and clipping in latent space (docs/codecs.md) sees it as is.
"""

from __future__ import annotations

from torch import nn


class ChunkMLP(nn.Module):
    """One MLP shared by all chunks: ``chunk -> hidden -> latent``, decoder mirrored."""

    def __init__(self, *, chunk_size: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(chunk_size, hidden), nn.Tanh(), nn.Linear(hidden, latent)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, chunk_size)
        )


class _Residual(nn.Module):
    """``x + conv(tanh(conv(x)))`` at constant shape (the predecessor's residual blocks)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class ConvAutoencoder(nn.Module):
    """CG-FedLLM's 2-D convolutional auto-encoder, small.

    Encoder: ``stages`` stride-2 convolutions (kernel 4, padding 1: each halves H and W),
    Tanh after every hidden stage, ``residual_blocks`` residual blocks at the lowest hidden
    resolution, the last stage to ``latent_channels``. Decoder mirrored with transposed
    convolutions (each doubles H and W). The predecessor used 6 stages, 64 channels and
    3 + 3 residual blocks on a [4096, 2048] input; the defaults of
    :class:`~drencoder.codecs.autoencoder.ConvAutoencoderCodec` shrink it for CPU.
    """

    def __init__(
        self, *, stages: int, channels: int, latent_channels: int, residual_blocks: int
    ) -> None:
        super().__init__()
        if stages < 2:
            raise ValueError(f"stages must be >= 2, got {stages}")
        enc: list[nn.Module] = []
        c_in = 1
        for _ in range(stages - 1):
            enc += [nn.Conv2d(c_in, channels, 4, stride=2, padding=1), nn.Tanh()]
            c_in = channels
        enc += [_Residual(c_in) for _ in range(residual_blocks)]
        enc.append(nn.Conv2d(c_in, latent_channels, 4, stride=2, padding=1))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [
            nn.ConvTranspose2d(latent_channels, channels, 4, stride=2, padding=1),
            nn.Tanh(),
        ]
        dec += [_Residual(channels) for _ in range(residual_blocks)]
        for i in range(stages - 1):
            last = i == stages - 2
            dec.append(nn.ConvTranspose2d(channels, 1 if last else channels, 4, 2, 1))
            if not last:
                dec.append(nn.Tanh())
        self.decoder = nn.Sequential(*dec)
