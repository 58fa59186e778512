"""Refactors must not change behaviour: seeded runs are bit-identical to recorded ones.

Each case runs the simulator on the tiny random model with reproducible noise and a fixed
σ, and compares a digest of its final adapter (every tensor's bytes) and of its
metrics rows (timings left out) with ``golden_runs.json``, recorded before a refactor.
The runs use one torch thread (CPU kernels may sum in another order with more threads, and
the digests must not depend on the machine's core count). A difference means a change
altered what a run computes: if that is intended (a new
default, a fixed bug), say so in the commit and record the new digests with

    DRENCODER_RECORD_GOLDEN=1 python -m pytest tests/federated/test_golden_runs.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drencoder.reporting import schema
from helpers import tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

GOLDEN = Path(__file__).with_name("golden_runs.json")
COMMON = [
    "rounds=2",
    "clients=3",
    "local.lr=0.01",
    "eval.questions=4",
    "eval.every=1",
    "privacy.reproducible_noise=true",
    "target_epsilon=none",
]
CASES = {
    "fedavg-lora": ["method=fedavg-lora"],
    "dp-fedavg-lora": ["method=dp-fedavg-lora", "privacy.noise_multiplier=1.0"],
    "ffa-lora-dp": ["method=ffa-lora-dp", "privacy.noise_multiplier=1.0"],
    "dp-random-projection": ["method=dp-random-projection", "privacy.noise_multiplier=1.0"],
    "dr-encoder": ["method=dr-encoder", "privacy.noise_multiplier=1.0"],
    "dr-encoder+proxy": [
        "method=dr-encoder",
        "codec.basis=proxy",
        "codec.proxy_examples=8",
        "privacy.noise_multiplier=1.0",
    ],
    "dp-fedavg-lora-central-adam": [
        "method=dp-fedavg-lora",
        "privacy.placement=central",
        "privacy.noise_multiplier=1.0",
        "server.optimizer=adam",
        "server.lr=0.01",
    ],
    "dp-fedavg-lora-record": [
        "method=dp-fedavg-lora",
        "privacy.unit=record",
        "privacy.noise_multiplier=1.0",
        "local.optimizer=sgd",
        "data.batch_size=2",
    ],
}


def _digest(run_dir: Path) -> dict[str, str]:
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    h = hashlib.sha256()
    for name in sorted(adapter):
        h.update(name.encode())
        h.update(adapter[name].contiguous().view(-1).numpy().tobytes())
    rows = schema.load_metrics(run_dir / "metrics.jsonl")
    kept = [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
    metrics = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    return {"adapter": h.hexdigest(), "metrics": metrics}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_seeded_run_is_bit_identical_to_the_recorded_one(tmp_path, case, one_thread):
    sim = tiny_simulator(tmp_path / case, [*COMMON, *CASES[case]])
    sim.run()
    got = _digest(tmp_path / case)
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("DRENCODER_RECORD_GOLDEN") == "1":
        recorded[case] = got
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    assert case in recorded, f"no recorded digest for {case}: see this module's docstring"
    assert got == recorded[case]
