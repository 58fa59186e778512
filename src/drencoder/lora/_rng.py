"""A seeded RNG scope that leaves the caller's global RNG state exactly as it was.

PEFT initialises ``lora_A`` with ``nn.init.kaiming_uniform_`` and ``nn.Dropout`` draws its
masks from the global generators, so neither accepts a ``torch.Generator``. Running them
inside :func:`seeded` makes them deterministic in ``seed`` without leaking: the CPU
generator and the generators of the CUDA devices the module lives on are forked
(``torch.random.fork_rng``) and restored on exit. Only those CUDA devices are re-seeded, so
the state of other devices is untouched too. Other accelerator types (MPS, XPU) are not
forked; on them randomness inside the scope is not controlled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from drencoder.errors import ConfigError

MAX_SEED = 2**63 - 1


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is an int in [0, 2**63 - 1], else raise ``ConfigError``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**63 - 1], got seed={seed!r}")
    return seed


def cuda_devices(module: torch.nn.Module) -> list[int]:
    """Sorted indices of the CUDA devices holding any of ``module``'s parameters/buffers."""
    if not torch.cuda.is_available():
        return []  # and no walk over every parameter (once per client update)
    tensors = [*module.parameters(), *module.buffers()]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


@contextlib.contextmanager
def seeded(seed: int, module: torch.nn.Module) -> Iterator[None]:
    """Fork the global RNGs that ``module`` can touch, seed them with ``seed``, restore."""
    check_seed(seed)
    devices = cuda_devices(module)
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
