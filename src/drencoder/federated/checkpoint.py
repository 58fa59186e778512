"""Checkpoints of a run: safetensors for tensors, JSON for everything else (no pickle).

Layout inside ``RUN/checkpoints/``::

    codec/                 the uplink codec (auto-encoder weights, projection seed), once
    round-0003/            one directory per checkpointed round
        adapter.safetensors    the global LoRA adapter (PEFT key format)
        rng.safetensors        the state of every torch.Generator of the run (uint8)
        ledger.json            the privacy ledger
        state.json             round, noise multiplier, metrics row count, stop reason
    latest.json            {"round": 3, "dir": "round-0003"}, replaced atomically

A checkpoint directory is written under a temporary name and renamed into place, and
``latest.json`` is replaced only afterwards, so a run killed at any moment leaves the
previous checkpoint intact. The two newest round directories are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from drencoder.accounting import PrivacyLedger
from drencoder.errors import CheckpointError

FORMAT = 1
KEEP = 2


@dataclass
class Checkpoint:
    round: int
    global_state: dict[str, torch.Tensor]
    rng_states: dict[str, torch.Tensor]
    ledger: PrivacyLedger
    metrics_rows: int
    noise_multiplier: float | None
    extra: dict = field(default_factory=dict)


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | os.PathLike, ckpt: Checkpoint) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"round-{ckpt.round:04d}"
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.contiguous() for k, v in ckpt.global_state.items()}, tmp / "adapter.safetensors"
    )
    save_file(dict(ckpt.rng_states), tmp / "rng.safetensors")
    ckpt.ledger.save(tmp / "ledger.json")
    state = {
        "format": FORMAT,
        "round": ckpt.round,
        "metrics_rows": ckpt.metrics_rows,
        "noise_multiplier": ckpt.noise_multiplier,
        "extra": ckpt.extra,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_json(root / "latest.json", {"round": ckpt.round, "dir": name})
    rounds = sorted(p for p in root.glob("round-*") if p.is_dir())
    for old in rounds[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    root = Path(run_dir) / "checkpoints"
    try:
        latest = json.loads((root / "latest.json").read_text())
        directory = root / latest["dir"]
        state = json.loads((directory / "state.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint in {run_dir}: expected checkpoints/latest.json from an earlier "
            "`drencoder run --out` (a run killed before its first checkpoint starts over)"
        ) from None
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"corrupt checkpoint metadata in {root}: {exc}") from exc
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint format {state.get('format')!r} is not supported (expected {FORMAT})"
        )
    return Checkpoint(
        round=int(state["round"]),
        global_state=load_file(directory / "adapter.safetensors"),
        rng_states=load_file(directory / "rng.safetensors"),
        ledger=PrivacyLedger.load(directory / "ledger.json"),
        metrics_rows=int(state["metrics_rows"]),
        noise_multiplier=state["noise_multiplier"],
        extra=state.get("extra", {}),
    )
