"""Result records: a score never travels without what it was measured on.

docs/design.md §4: every score carries the number of shots, the number of questions, the model,
the adapter, the method and ε. ``eval_record`` builds that dict (JSON-ready: only str,
int, float, None, lists and dicts) from an ``MCResult`` or a ``LossResult``.

``adapter_hash`` identifies the adapter by content: ``sha256:`` + the hex SHA-256 of the
flat adapter vector as little-endian float32 bytes (the ``drencoder.lora`` layout order),
so two runs that end with bit-identical adapters share a hash. A string is taken as an
already computed identifier and kept as is; ``None`` means the base model
(``"none"``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch

from drencoder.errors import ConfigError

NO_ADAPTER = "none"


class Scored(Protocol):
    n_questions: int
    n_shot: int

    def metrics(self) -> dict[str, object]: ...


def adapter_hash(adapter: torch.Tensor | np.ndarray | bytes | str | None) -> str:
    """Content hash of a flat adapter vector (see the module docstring)."""
    if adapter is None:
        return NO_ADAPTER
    if isinstance(adapter, str):
        if not adapter:
            raise ConfigError("an adapter identifier must be a non-empty string, got ''")
        return adapter
    if isinstance(adapter, bytes):
        data = adapter
    else:
        if isinstance(adapter, torch.Tensor):
            adapter = adapter.detach().to(device="cpu", dtype=torch.float32).numpy()
        data = np.ascontiguousarray(np.asarray(adapter).reshape(-1), dtype="<f4").tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def eval_record(
    result: Scored,
    *,
    task: str,
    model_name: str,
    adapter: torch.Tensor | np.ndarray | bytes | str | None,
    method: str,
    epsilon: float | None,
    delta: float | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The JSON record of one evaluation.

    ``epsilon`` is the client-level ε the run spent (from the caller's ledger); ``None``
    means no DP guarantee (``fedavg-lora``). It must be finite and >= 0 otherwise.
    ``extra`` adds keys (seed, round, data split…) but may not overwrite the required ones.
    """
    if epsilon is not None and (not math.isfinite(epsilon) or epsilon < 0):
        raise ConfigError(
            f"epsilon must be a finite number >= 0, or None for no DP guarantee; "
            f"got epsilon={epsilon}"
        )
    if delta is not None and not 0.0 <= delta <= 1.0:
        raise ConfigError(f"delta must be in [0, 1] or None, got delta={delta}")
    record: dict[str, object] = {
        "task": task,
        "model": model_name,
        "adapter_hash": adapter_hash(adapter),
        "method": method,
        "epsilon": None if epsilon is None else float(epsilon),
        "delta": None if delta is None else float(delta),
        "n_shot": int(result.n_shot),
        "n_questions": int(result.n_questions),
        **result.metrics(),
    }
    clash = sorted(set(extra or {}) & set(record))
    if clash:
        raise ConfigError(f"extra keys {clash} would overwrite required record fields")
    record.update(extra or {})
    return record
