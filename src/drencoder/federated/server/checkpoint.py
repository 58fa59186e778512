"""Checkpoints of a run: safetensors for tensors, JSON for everything else (no pickle).

Layout inside ``RUN/checkpoints/``::

    codec/                 the uplink codec (auto-encoder weights, projection seed), once
    round-0003/            one directory per checkpointed round
        adapter.safetensors    the global LoRA adapter (PEFT key format)
        rng.safetensors        the state of every torch.Generator of the run (uint8)
        optimizer.safetensors  the server optimizer's moments (momentum, adam; absent for sgd)
        ledger.json            the privacy ledger
        state.json             round, noise multiplier, metrics row count, stop reason,
                               the server optimizer's step count, the adaptive clip norm
    latest.json            {"round": 3, "dir": "round-0003"}, replaced atomically
    pending-charges.jsonl  privacy charges made since the newest checkpoint (write-ahead)

A checkpoint directory is written under a temporary name and renamed into place, and
``latest.json`` is replaced only afterwards, so a run killed at any moment leaves the
previous checkpoint intact. The two newest round directories are kept.

Charges made since the newest checkpoint are in ``pending-charges.jsonl``
(:mod:`drencoder.federated.server.charges`).
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
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)
    """The server optimizer's tensors (:mod:`drencoder.federated.server.optimizer`); its
    scalars are in ``extra``."""


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
    if ckpt.optimizer_state:
        save_file(
            {k: v.detach().contiguous() for k, v in ckpt.optimizer_state.items()},
            tmp / "optimizer.safetensors",
        )
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


def damaged_file(path: Path, problem: str) -> CheckpointError:
    """The error for a damaged checkpoint file, with the ways out."""
    return CheckpointError(
        f"checkpoint file {path} {problem}; the run directory was left unchanged. Restore the "
        "file from a backup, or point checkpoints/latest.json at the previous round-NNNN "
        "directory, or start a new run with --out"
    )


def _read_json(path: Path, *, keys: tuple[str, ...] = ()) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise damaged_file(path, "is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged_file(path, f"cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise damaged_file(path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise damaged_file(path, f"is not a JSON object with the keys {', '.join(keys)}")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """``load_file`` with a ``CheckpointError`` naming the file when it is missing or corrupt."""
    if not path.is_file():
        raise damaged_file(path, "is missing")
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
        raise damaged_file(
            path, f"is truncated or corrupt ({' '.join(str(exc).split())})"
        ) from None


def load_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """Read the newest checkpoint; every file is parsed and checked before returning, so a
    damaged checkpoint raises ``CheckpointError`` before the caller changes anything."""
    root = Path(run_dir) / "checkpoints"
    if not (root / "latest.json").is_file():
        raise CheckpointError(
            f"no checkpoint in {run_dir}: expected checkpoints/latest.json from an earlier "
            "`drencoder run --out` (a run killed before its first checkpoint starts over: "
            "run it again with --out)"
        )
    latest = _read_json(root / "latest.json", keys=("dir",))
    directory = root / str(latest["dir"])
    if not directory.is_dir() or directory.parent != root:
        raise damaged_file(root / "latest.json", f"names {latest['dir']!r}, which is not in {root}")
    state_path = directory / "state.json"
    state = _read_json(state_path, keys=("format", "round", "metrics_rows", "noise_multiplier"))
    if state["format"] != FORMAT:
        raise CheckpointError(
            f"checkpoint format {state['format']!r} in {state_path} is not supported "
            f"(expected {FORMAT}); resume it with the drencoder version that wrote it"
        )
    try:
        round_, rows = int(state["round"]), int(state["metrics_rows"])
        sigma = state["noise_multiplier"]
        sigma = None if sigma is None else float(sigma)
    except (TypeError, ValueError) as exc:
        raise damaged_file(state_path, f"has a malformed value ({exc})") from None
    extra = state.get("extra", {})
    if not isinstance(extra, dict):
        raise damaged_file(state_path, f"has extra={extra!r}, expected a JSON object")
    try:
        ledger = PrivacyLedger.load(directory / "ledger.json")
    except (CheckpointError, ValueError, TypeError, KeyError) as exc:
        raise damaged_file(directory / "ledger.json", f"is unusable ({exc})") from None
    return Checkpoint(
        round=round_,
        global_state=_read_tensors(directory / "adapter.safetensors"),
        rng_states=_read_tensors(directory / "rng.safetensors"),
        ledger=ledger,
        metrics_rows=rows,
        noise_multiplier=sigma,
        extra=extra,
        optimizer_state=_read_tensors(directory / "optimizer.safetensors")
        if (directory / "optimizer.safetensors").exists()
        else {},
    )
