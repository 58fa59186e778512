"""The outputs of a finished (or stopped) run: ``adapter/`` in PEFT format,
``summary.json``, PNG plots and ``report.md``. Rebuilt from the simulator's state, so
resuming a completed run rewrites identical outputs.
"""

from __future__ import annotations

import json
import platform
from typing import TYPE_CHECKING

import torch

from drencoder import __version__
from drencoder.federated import rundir
from drencoder.reporting import plot_run, write_report

if TYPE_CHECKING:
    from drencoder.federated.orchestration import FederatedServer


def summarize(sim: FederatedServer) -> dict:
    cfg, rows = sim.config, sim.rows
    rounds = [r for r in rows if r["kind"] == "round"]
    stage1 = next((r for r in rows if r["kind"] == "stage1"), None)
    eps = sim._epsilons()
    recon = [
        r[rundir.NOT_COVERED]["reconstruction"]
        for r in rounds
        if "reconstruction" in r.get(rundir.NOT_COVERED, {})
    ]
    full_bytes = sim.layout.dim * 4
    privacy = {"private": sim.spec.private}
    if sim.spec.private:
        privacy.update(
            {
                "delta": cfg.delta,
                "epsilon": eps,
                "noise_multiplier": sim.noise_multiplier,
                "sigma_source": sim.sigma_source,
                "clip_norm": cfg.privacy.clip_norm,
                "placement": cfg.privacy.placement.value,
                "clip_point": cfg.privacy.clip_point.value,
                "aggregation": cfg.privacy.aggregation.value,
                "sampling": f"{cfg.sampling.scheme.value} (rate {cfg.sampling.rate:g})"
                if cfg.sampling.scheme.value == "poisson"
                else f"fixed ({cfg.sampling.per_round} per round)",
                "target_epsilon": cfg.target_epsilon,
                "accountant": cfg.privacy.accountant,
                "charges": sim.ledger.charges(),
                "participation": sim.ledger.participation(),
                "gdp_clt": sim.ledger.uses_clt(),
            }
        )
        if stage1 is not None:
            privacy["statistics"] = (
                f"Gaussian, noise multiplier {cfg.stage1.noise_multiplier:g}, clip "
                f"{cfg.stage1.clip_norm:g}, charged once to every client"
                if cfg.stage1.release_noise
                else "released WITHOUT noise: no finite epsilon"
            )
    return {
        "method": cfg.method.value,
        "model": cfg.model.name,
        "task": cfg.data.task.value,
        "clients": cfg.clients,
        "seed": cfg.seed,
        "rounds_planned": cfg.rounds,
        "rounds_done": sim.round,
        "stop_reason": sim.stop_reason,
        "privacy": privacy,
        "communication": {
            "codec": sim.codec.name,
            "latent_dim": sim.codec.latent_dim,
            "bytes_per_upload": sim.codec.bytes_per_upload,
            "full_dim": sim.layout.dim,
            "full_bytes": full_bytes,
            "total_up": sum(r["bytes_up"] for r in rows if "bytes_up" in r),
            "total_down": sum(r["bytes_down"] for r in rows if "bytes_down" in r),
        },
        rundir.NOT_COVERED: {
            "note": "measured on raw client updates inside a simulation; no epsilon covers "
            "these numbers",
            "reconstruction": {
                "rel_error": sum(r["rel_error"] for r in recon) / len(recon),
                "cosine": sum(r["cosine"] for r in recon) / len(recon),
            },
        }
        if recon
        else None,
        "run": {
            "drencoder": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds in rounds": round(sum(r["seconds"] for r in rounds), 1),
            "workload": json.dumps(sim.workload.description.get("examples_per_client")),
        },
    }


def write_outputs(sim: FederatedServer) -> dict:
    run_dir = sim.run_dir
    sim.model.save_pretrained(run_dir / "adapter")
    summary = summarize(sim)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    plots = plot_run(sim.rows, run_dir)
    write_report(run_dir, summary=summary, rows=sim.rows, plots=plots)
    return summary
