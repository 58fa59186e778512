"""The real embedded model end to end: `drencoder run --preset smoke` (about 1.5 min)."""

from __future__ import annotations

import json

import pytest

from drencoder.cli.main import main
from drencoder.reporting import schema


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")
def test_smoke_preset_runs_the_embedded_default(tmp_path, capsys, torch_threads):
    out = tmp_path / "smoke"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and "epsilon:" in printed
    rows = schema.load_metrics(out / "metrics.jsonl")
    kinds = [r["kind"] for r in rows]
    assert kinds.count("round") == 2 and kinds.count("stage1") == 1
    last = schema.rounds(rows)[-1]
    assert last["epsilon"]["pld"] <= 8.0
    raw = [r["not_covered_by_epsilon"] for r in rows if r["kind"] == "round"]
    assert all(d["train_loss"] == d["train_loss"] for d in raw)  # not NaN
    # DR-Encoder uploads 1/64 of the full LoRA update (SmolLM2, r=8 on q,k,v,o: 921,600).
    summary = json.loads((out / "summary.json").read_text())
    assert summary["communication"]["full_dim"] == 921_600
    assert summary["communication"]["latent_dim"] == 14_400
    report = (out / "report.md").read_text()
    for needle in ("before fine-tuning", "after fine-tuning", "| pld |", "dp-fedavg-lora"):
        assert needle in report
