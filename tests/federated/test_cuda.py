"""The simulator on a CUDA device (tiny random model): every method runs, and a run is the
same computation as on the CPU up to floating-point differences. Skipped without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from drencoder.config import load_config
from drencoder.federated.simulator import Simulator
from drencoder.reporting import schema
from helpers import make_tiny_llama, make_tiny_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning"),
]

BASE = ["rounds=2", "clients=3", "local.lr=0.01", "eval.questions=4", "eval.every=0"]


def run(tmp_path, name, *overrides):
    cfg = load_config(preset="smoke", overrides=[*BASE, *overrides])
    sim = Simulator(
        cfg,
        tmp_path / name,
        model_and_tokenizer=(make_tiny_llama(), make_tiny_tokenizer()),
        progress=False,
    )
    summary = sim.run()
    return sim, summary


@pytest.mark.parametrize(
    "method",
    ["fedavg-lora", "dp-fedavg-lora", "ffa-lora-dp", "dp-random-projection", "dr-encoder"],
)
def test_every_method_runs_on_cuda(tmp_path, method):
    sim, summary = run(tmp_path, method, f"method={method}", "model.device=cuda")
    assert next(sim.model.parameters()).device.type == "cuda"
    assert summary["rounds_done"] == 2
    state = sim.global_state
    assert all(torch.isfinite(v).all() for v in state.values())
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if "lora_B" in k)
    rows = schema.load_metrics(sim.run_dir / "metrics.jsonl")
    rounds = schema.rounds(rows)
    assert all(math.isfinite(r["not_covered_by_epsilon"]["train_loss"]) for r in rounds)


@pytest.mark.parametrize("method", ["dp-fedavg-lora", "dp-random-projection"])
def test_cuda_matches_cpu_up_to_float_error(tmp_path, method):
    """Same seed on both devices, with reproducible noise (the default draws it from OS
    entropy): noise comes from CPU generators, so only the arithmetic of local training
    differs; the adapters agree closely and the ledgers exactly."""
    repro = "privacy.reproducible_noise=true"
    cpu, _ = run(tmp_path, "cpu", f"method={method}", repro)
    gpu, _ = run(tmp_path, "gpu", f"method={method}", "model.device=cuda", repro)
    for key, value in cpu.global_state.items():
        torch.testing.assert_close(gpu.global_state[key].cpu(), value, rtol=1e-3, atol=1e-4)
    assert gpu.ledger.epsilons() == cpu.ledger.epsilons()
