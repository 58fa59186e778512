"""A scope that puts a module in train or eval mode and restores every submodule's own mode.

``module.train(mode)`` recurses, so restoring a saved mode per submodule by calling
``train`` on each costs one traversal per submodule: with a whole decoder behind the
prefix-cached top (thousands of submodules) that was a third of a cross-device client's
time. The flags are restored directly instead, which leaves each submodule exactly as it
was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def training_mode(module: torch.nn.Module, training: bool) -> Iterator[None]:
    """Run the body with ``module.train(training)``; restore every submodule's mode after."""
    saved = [(m, m.training) for m in module.modules()]
    try:
        module.train(training)
        yield
    finally:
        for m, mode in saved:
            m.training = mode
