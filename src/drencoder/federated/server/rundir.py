"""Checks that a run directory can take a run, made before anything is loaded or trained.

``drencoder run`` calls :func:`prepare_run_dir` before it loads the model: the directory must
be a directory (or creatable), must not already hold a run when it is a new ``--out``, and
must accept a real write: a probe file of ``PROBE_BYTES`` is written, ``fsync``-ed and
deleted, which catches read-only mounts, permissions and quotas that ``os.access`` misses.
:meth:`Simulator.run` then compares the disk's free space with
:func:`estimate_run_bytes` once the adapter's size is known, still before the first round.
Both raise :class:`~drencoder.errors.StorageError` (exit code 2 in the CLI) and leave any
existing files as they were.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from drencoder.codecs.base import latent_dim_for
from drencoder.errors import CheckpointError, ConfigError, StorageError
from drencoder.federated.server.checkpoint import KEEP
from drencoder.reporting.schema import MetricsRow, RowError, parse_metrics

PROBE_BYTES = 4 * 2**20
"""Size of the probe file written (and deleted) by :func:`prepare_run_dir`."""
SLACK_BYTES = 16 * 2**20
"""Metrics, plots, report, ledgers, RNG states and config: a generous allowance."""
AE_HIDDEN = 256
"""Hidden width of the chunked MLP auto-encoder (its default), for the codec estimate."""


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def prepare_run_dir(path: str | os.PathLike, *, fresh: bool, probe_bytes: int = PROBE_BYTES):
    """Create ``path`` if needed and prove it writable.

    ``fresh`` (a new ``--out``) refuses a directory that already holds a run; otherwise
    (``--resume``) ``path`` must be a run directory. An empty directory created here stays
    behind if the run later fails; running the same command again reuses it.
    """
    path = Path(path)
    option = "--out" if fresh else "--resume"
    if not fresh and not (path / "config.toml").is_file():
        raise CheckpointError(
            f"{path} is not a drencoder run directory (no config.toml); give the --out "
            "directory of an earlier `drencoder run`"
        )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a directory; choose another {option}")
    if fresh and (path / "checkpoints" / "latest.json").exists():
        raise ConfigError(
            f"{path} already holds a run; resume it with --resume {path} or choose another --out"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot write the run directory {path} ({exc.strerror or exc}); choose a "
            f"writable {option} directory or fix its permissions"
        ) from None
    probe = path / f".drencoder-write-probe-{os.getpid()}"
    try:
        with probe.open("wb") as f:
            chunk = bytes(2**20)
            for start in range(0, probe_bytes, len(chunk)):
                f.write(chunk[: min(len(chunk), probe_bytes - start)])
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise StorageError(
            f"cannot write the run directory {path}: a {_mib(probe_bytes)} probe file failed "
            f"({exc.strerror or exc}); free space, fix its permissions or choose another "
            f"{option} directory"
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    return path


def estimate_run_bytes(*, adapter_bytes: int, codec_bytes: int) -> int:
    """What a run writes at most: the adapter ``KEEP + 2`` times (the kept checkpoints, one
    being written, the final PEFT adapter), the codec once, and ``SLACK_BYTES``."""
    return adapter_bytes * (KEEP + 2) + codec_bytes + SLACK_BYTES


def codec_bytes_estimate(*, input_dim: int, chunk_size: int, compression_ratio: float) -> int:
    """An upper estimate of a saved codec: the chunked MLP auto-encoder's weights (the
    largest codec; the convolutional one is smaller and projections store only a seed)."""
    c = min(chunk_size, input_dim)
    k = latent_dim_for(c, compression_ratio=compression_ratio)
    params = 2 * (c * AE_HIDDEN + AE_HIDDEN * k) + 2 * AE_HIDDEN + k + c
    return 4 * params + 2**16


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_free_space(path: str | os.PathLike, *, need_bytes: int) -> None:
    """``StorageError`` unless the disk holding ``path`` has ``need_bytes`` free."""
    free = shutil.disk_usage(_existing(Path(path))).free
    if free < need_bytes:
        raise StorageError(
            f"the disk holding {path} has {_mib(free)} free, a run needs about "
            f"{_mib(need_bytes)} (checkpoints, adapter, codec, metrics); free space or "
            "choose another --out"
        )


def read_metrics(path: Path, expected: int) -> list[MetricsRow]:
    """The first ``expected`` rows of ``metrics.jsonl``, each checked against its type;
    ``CheckpointError`` if unreadable."""
    lines = path.read_text().splitlines() if path.exists() else []
    if len(lines) < expected:
        raise CheckpointError(
            f"{path} has {len(lines)} rows, the checkpoint expects {expected}; the file was "
            "cut short: restore it from a backup or start a new run with --out"
        )
    try:
        return parse_metrics(lines[:expected], source=path)
    except RowError as exc:
        raise CheckpointError(
            f"{exc}; the file was damaged, edited or written by another drencoder version: "
            "restore it from a backup, resume with the version that wrote it, or start a new "
            "run with --out"
        ) from None


def check_run_space(server) -> None:
    """``StorageError`` before any training when the disk cannot hold ``server``'s run."""
    c = server.config.codec
    codec_bytes = (
        0
        if server.codec is not None
        else codec_bytes_estimate(
            input_dim=server.layout.dim,
            chunk_size=c.chunk_size,
            compression_ratio=c.compression_ratio,
        )
    )
    adapter_bytes = sum(v.numel() * v.element_size() for v in server.global_state.values())
    need = estimate_run_bytes(adapter_bytes=adapter_bytes, codec_bytes=codec_bytes)
    check_free_space(server.run_dir, need_bytes=need)


def restore_model_state(server, ckpt) -> None:
    """Load a checkpoint's adapter and generator states into ``server``, or
    ``CheckpointError`` naming the file and the fix when they do not fit."""
    from drencoder.lora import get_adapter_state, set_adapter_state

    try:
        set_adapter_state(server.model, ckpt.global_state)
    except ConfigError as exc:
        raise CheckpointError(
            f"adapter.safetensors of the round-{ckpt.round} checkpoint does not fit this "
            f"model and config ({' '.join(str(exc).split())[:300]}); resume with the "
            "run's own model, or start a new run with --out"
        ) from None
    try:
        for name, state in ckpt.rng_states.items():
            server.generators[name].set_state(state)
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"rng.safetensors of the round-{ckpt.round} checkpoint holds an unusable "
            f"generator state ({type(exc).__name__}: {exc}); start a new run with --out"
        ) from None
    server.global_state = get_adapter_state(server.model)
