"""Shared fixtures (the helpers they build on are in ``helpers.py``)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from helpers import make_tiny_llama, make_tiny_tokenizer


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model():
    return make_tiny_llama()


# Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of
# the cores for torch, so that workers do not oversubscribe them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    torch.set_num_threads(CORES)


@pytest.fixture
def torch_threads():
    """Use this worker's share of the cores for a test that runs the real embedded model."""
    before = torch.get_num_threads()
    torch.set_num_threads(CORES)
    yield
    torch.set_num_threads(before)
