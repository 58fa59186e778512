"""One-time conversion of a registered GGUF model into a cached Hugging Face folder.

Why convert at all: loading a GGUF through transformers dequantizes every tensor and
rebuilds the tokenizer (about 20-30 s for SmolLM2-135M, 80 s for Gemma-270M on 2 cores);
loading the converted fp32 safetensors folder takes about a second. ``save_pretrained``
refuses a GGUF-loaded model, so the weights are copied into a model built from the same
config with ``quantization_config`` deleted (``research/offline-assets.md``).

Cache location: ``$DRENCODER_CACHE`` if set and non-empty, else ``~/.cache/drencoder``; a
model lives in ``<root>/models/<name>/``. The default is outside any source tree, so the
500 MB-1 GB folders never end up in git.

Atomicity: the folder is written into a temporary sibling ``.<name>.tmp-*`` and renamed
into place only after the marker file (``drencoder-model.json``, written last) is on disk.
A conversion killed half-way leaves a temporary folder that is never loaded and is removed
by a later conversion once it is an hour old. There is no lock: two processes converting at
once both do the work and the first rename wins; the loser discards its copy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from drencoder.errors import AssetError, ConfigError
from drencoder.models.registry import MODELS, ModelSpec

logger = logging.getLogger(__name__)

MARKER = "drencoder-model.json"
MARKER_FORMAT = 1
STALE_AFTER_S = 3600.0


def cache_root() -> Path:
    """``$DRENCODER_CACHE`` (when set and non-empty) or ``~/.cache/drencoder``."""
    env = os.environ.get("DRENCODER_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "drencoder"


def model_dir(spec: ModelSpec) -> Path:
    """Where the converted folder of ``spec`` lives (it may not exist yet)."""
    return cache_root() / "models" / spec.name


def read_marker(folder: Path) -> dict | None:
    """The folder's marker as a dict, or ``None`` if it is missing or unreadable."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(folder: Path, spec: ModelSpec) -> bool:
    """Whether ``folder`` is a finished conversion of ``spec``'s installed source.

    The marker is written last inside the temporary folder, so its presence means the
    folder is complete. When the source package is not installed any finished
    conversion is accepted (a pre-built cache is self-sufficient).
    """
    marker = read_marker(folder)
    if marker is None or marker.get("format") != MARKER_FORMAT:
        return False
    if marker.get("model") != spec.name or marker.get("gguf_file") != spec.gguf_filename:
        return False
    installed = spec.installed_version()
    return installed is None or marker.get("source_version") == installed


def file_digest(path: Path) -> tuple[str, int]:
    """(SHA-256 hex digest, size in bytes) of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_size


def _remove_stale(parent: Path, name: str) -> None:
    now = time.time()
    for leftover in parent.glob(f".{name}.*-*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(leftover, ignore_errors=True)


def materialize(
    target: Path, build: Callable[[Path], dict], *, is_valid: Callable[[Path], bool]
) -> Path:
    """Create folder ``target`` atomically: ``build(tmp)`` fills a temporary sibling.

    ``build`` writes the folder contents and returns the marker dict, which is written
    last. The temporary folder is then renamed to ``target``. If a valid ``target`` appeared
    meanwhile (another process), ours is discarded; an invalid old ``target`` is moved
    aside first and deleted after the swap. On any exception the temporary folder is
    removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target.parent, target.name)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()  # unlike mkdtemp (0700) this honours the umask, like the final folder should
    try:
        marker = build(tmp)
        with open(tmp / MARKER, "w", encoding="utf-8") as fh:
            json.dump(marker, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        old = None
        if target.exists():
            if is_valid(target):
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_valid(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process published first
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def quiet_transformers(*, warnings: bool = True) -> Iterator[None]:
    """Silence transformers' progress bars (and, with ``warnings=False``, its warnings).

    The GGUF de-quantization bar uses ``tqdm.auto`` directly and ignores
    ``disable_progress_bar()``, so that module's ``tqdm`` name is swapped for a disabled
    one for the duration and restored afterwards.
    """
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # GGUF support missing: there is no bar to silence
        gguf_utils = None

    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    original_tqdm = getattr(gguf_utils, "tqdm", None) if gguf_utils is not None else None
    hf_logging.disable_progress_bar()
    if not warnings:
        hf_logging.set_verbosity_error()
    if original_tqdm is not None:
        gguf_utils.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()


def convert_gguf(spec: ModelSpec, out: Path, *, progress: bool) -> dict:
    """Write ``spec``'s model as an fp32 safetensors HF folder into ``out``; return the marker."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = spec.installed_version()
    steps = ("locate GGUF", "tokenizer", "de-quantize weights", "rebuild fp32", "write")
    start = time.perf_counter()
    with (
        tqdm(
            total=len(steps),
            desc=f"drencoder: converting {spec.name} into the model cache (one time)",
            unit="step",
            disable=not progress,
        ) as bar,
        quiet_transformers(warnings=False),
    ):

        def step(i: int) -> None:
            bar.set_postfix_str(steps[i])
            if i:
                bar.update()

        step(0)
        gguf_dir = out / "_gguf"
        gguf_dir.mkdir()
        gguf = spec.locate(spec, gguf_dir)
        sha256, size = file_digest(gguf)
        step(1)
        common = {"gguf_file": gguf.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **common)
        step(2)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), dtype=torch.float32, **common
        )
        step(3)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        del loaded
        count = sum(p.numel() for p in model.parameters())
        if count != spec.parameters:
            raise AssetError(
                f"converted {spec.name} has {count:,} parameters, expected "
                f"{spec.parameters:,}; the GGUF in {spec.source_distribution} "
                f"{version} is not the file this recipe was written for"
            )
        step(4)
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        shutil.rmtree(gguf_dir)
        bar.update()
    import transformers

    return {
        "format": MARKER_FORMAT,
        "model": spec.name,
        "source_distribution": spec.source_distribution,
        "source_version": version,
        "gguf_file": spec.gguf_filename,
        "gguf_sha256": sha256,
        "gguf_size": size,
        "parameters": count,
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "convert_seconds": round(time.perf_counter() - start, 1),
    }


def prepare_model(model: str | ModelSpec, *, force: bool = False, progress: bool = True) -> Path:
    """Return the converted folder of a registered model, converting it first if needed.

    ``model`` is a registered name or its ``ModelSpec``. ``force=True`` converts again
    even if a current folder exists (the old one is replaced atomically).
    """
    if isinstance(model, ModelSpec):
        spec = model
    elif model in MODELS:
        spec = MODELS[model]
    else:
        raise ConfigError(
            f"unknown registered model {model!r}; valid names are {', '.join(sorted(MODELS))}"
        )
    target = model_dir(spec)
    if not force and is_current(target, spec):
        return target
    spec.require_installed()

    def valid(folder: Path) -> bool:
        return not force and is_current(folder, spec)

    folder = materialize(
        target, lambda out: convert_gguf(spec, out, progress=progress), is_valid=valid
    )
    logger.info("model %s is cached in %s", spec.name, folder)
    return folder
