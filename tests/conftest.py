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


@pytest.fixture
def torch_threads():
    """Use every core for the duration of a test that runs the real embedded model."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)
