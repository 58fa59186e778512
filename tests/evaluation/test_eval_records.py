"""Result records always carry n_shot, n_questions, model, adapter hash, method and epsilon."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from drencoder.errors import ConfigError
from drencoder.evaluation import LossResult, MCResult, adapter_hash, eval_record

MC = MCResult(
    accuracy=0.5,
    per_subject={"a": 0.5},
    per_subject_n={"a": 4},
    mean_logprob_correct=-1.2,
    n_questions=4,
    n_shot=5,
    predictions=(0, 1, 2, 3),
    choice_logprobs=((-1.0, -2.0),) * 4,
)


def test_adapter_hash_is_content_based():
    vec = torch.arange(6, dtype=torch.float32)
    h = adapter_hash(vec)
    # Reference: SHA-256 of the little-endian float32 bytes, computed independently.
    assert h == "sha256:" + hashlib.sha256(np.arange(6, dtype="<f4").tobytes()).hexdigest()
    assert adapter_hash(vec.numpy()) == h == adapter_hash(vec.reshape(2, 3))
    assert adapter_hash(vec + 1e-6) != h
    assert adapter_hash("run-7/round-3") == "run-7/round-3"
    assert adapter_hash(None) == "none"


def test_record_fields_and_json():
    rec = eval_record(
        MC,
        task="mmlu",
        model_name="smollm2-135m",
        adapter=torch.zeros(3),
        method="dr-encoder",
        epsilon=2.0,
        delta=1e-5,
        extra={"seed": 1},
    )
    for key in ("n_shot", "n_questions", "model", "adapter_hash", "method", "epsilon"):
        assert key in rec
    assert rec["n_shot"] == 5 and rec["n_questions"] == 4 and rec["accuracy"] == 0.5
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec
    loss = eval_record(
        LossResult(mean_nll=1.0, n_tokens=10, n_examples=3),
        task="sentiment-loss",
        model_name="m",
        adapter=None,
        method="fedavg-lora",
        epsilon=None,
    )
    assert loss["n_shot"] == 0 and loss["n_questions"] == 3 and loss["epsilon"] is None


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), -1.0])
def test_bad_epsilon_and_clashing_extra(eps):
    with pytest.raises(ConfigError, match="epsilon"):
        eval_record(MC, task="t", model_name="m", adapter=None, method="x", epsilon=eps)
    with pytest.raises(ConfigError, match="overwrite"):
        eval_record(
            MC,
            task="t",
            model_name="m",
            adapter=None,
            method="x",
            epsilon=1.0,
            extra={"epsilon": 0.0},
        )
