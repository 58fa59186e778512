"""Update codecs: the ``Codec`` protocol, identity, random projection, random-prior AEs,
and structured subspace codecs.

Every codec maps a flat update vector (``drencoder.lora.layout``) to a latent and back, and
saves as safetensors + JSON (:func:`load_codec`). See docs/codecs.md.
"""

from drencoder.codecs.autoencoder import (
    AutoencoderCodec,
    ConvAutoencoderCodec,
    MlpAutoencoderCodec,
    Normalization,
)
from drencoder.codecs.base import (
    DEFAULT_COMPRESSION_RATIO,
    Codec,
    latent_dim_for,
    load_codec,
    rebuild_codec,
    register_codec,
    registered_codecs,
)
from drencoder.codecs.identity import IdentityCodec
from drencoder.codecs.projection import RandomProjectionCodec
from drencoder.codecs.subspace import SubspaceCodec
from drencoder.codecs.training import TrainReport, train_autoencoder

__all__ = [
    "DEFAULT_COMPRESSION_RATIO",
    "AutoencoderCodec",
    "Codec",
    "ConvAutoencoderCodec",
    "IdentityCodec",
    "MlpAutoencoderCodec",
    "Normalization",
    "RandomProjectionCodec",
    "SubspaceCodec",
    "TrainReport",
    "latent_dim_for",
    "load_codec",
    "rebuild_codec",
    "register_codec",
    "registered_codecs",
    "train_autoencoder",
]
