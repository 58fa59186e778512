"""The wire format of drencoder's Flower apps: message types, record names, error codes,
the run config, and tensors as Flower records (numpy arrays, never pickle).

Shared by the ClientApp (:mod:`.client`) and the ServerApp (:mod:`.server`), so the two sides
agree on every name by construction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from drencoder.codecs import Codec, rebuild_codec
from drencoder.config import RunConfig, load_config

RESERVED = {"out": "", "preset": "default", "round-timeout": 600.0, "connect-timeout": 120.0}
"""Run-config keys that are not drencoder config keys, with their defaults."""

HELLO, STAGE1, TRAIN = "query.hello", "train.stage1", "train"

# Record names and keys on the wire besides tensors and seeds.
MECHANISM = "mechanism"
"""Config record of a task (key :data:`DESCRIPTION`) and of its reply (key
:data:`FINGERPRINT`)."""
DESCRIPTION = "description"
"""Canonical JSON of the mechanism the server accounts the task under."""
FINGERPRINT = "fingerprint"
"""The fingerprint of the description the node made its message under."""
RECORD_EPSILON = "record-epsilon"
"""Record-level rounds: the per-record ε a node's own record ledger stands at after the
round (PLD, at the node's δ), which the node declares beside its fingerprint."""

LATENT = "latent"
"""Key of the privatised message in a training reply's ``update`` record."""
CLIP_BIT = "clip-bit"
"""Key of the clip indicator (one float32, 0 or 1) in a training reply's ``update`` record,
present exactly when the round's description has a ``count_noise`` (adaptive clipping)."""

REFUSED_CODE = 1001
"""Error code of a reply by which a node declines a task under its own policy."""
CLIENT_ERROR_CODE = 1002
"""Error code of a reply by which a node reports that its handler failed."""
REFUSED_REASON, CLIENT_ERROR_REASON = "refused", "client-error"
"""The only reasons a node's error replies carry (Flower's own codes are 0..8)."""


# -- configuration ---------------------------------------------------------------------
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def config_from_run_config(run_config: Mapping) -> tuple[RunConfig, dict]:
    """drencoder's :class:`RunConfig` and the reserved settings from a Flower run config.

    Keys other than :data:`RESERVED` become drencoder overrides ``key=value``; values
    that are empty strings are skipped (the key keeps its default).
    """
    settings = {k: run_config.get(k, default) for k, default in RESERVED.items()}
    overrides = [
        f"{k}={_toml_value(v)}"
        for k, v in sorted(run_config.items())
        if k not in RESERVED and v != ""
    ]
    return load_config(preset=str(settings["preset"]), overrides=overrides), settings


# -- tensors <-> records (numpy, never pickle) -------------------------------------------
def to_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(v.detach().cpu().to(torch.float32).contiguous().numpy())
            for k, v in tensors.items()
        }
    )


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def codec_content(codec: Codec) -> dict:
    """The records that carry a codec's encoder to a client (the decoder stays here)."""
    return {
        "codec": ConfigRecord({"name": codec.name, "config": json.dumps(codec.config())}),
        "encoder": to_record(codec.encoder_state_dict()),
    }


def codec_from_content(content: RecordDict) -> Codec:
    meta = content.config_records["codec"]
    return rebuild_codec(
        str(meta["name"]),
        json.loads(str(meta["config"])),
        from_record(content.array_records["encoder"]),
    )
