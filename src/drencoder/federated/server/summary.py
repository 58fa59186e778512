"""The outputs of a finished (or stopped) run: ``adapter/`` in PEFT format,
``summary.json``, PNG plots and ``report.md``. Rebuilt from the simulator's state, so
resuming a completed run rewrites identical outputs.
"""

from __future__ import annotations

import json
import math
import platform

import torch

from drencoder import __version__
from drencoder.federated.record import per_client_epsilon
from drencoder.federated.server import budget
from drencoder.federated.server.state import ServerState
from drencoder.reporting import plot_run, write_report
from drencoder.reporting.schema import (
    NOT_COVERED,
    MetricsRow,
    NoiseOnMean,
    PrivacySummary,
    RecordPrivacy,
    Summary,
    UtilitySummary,
    check_summary,
    evals,
    rounds,
    stage1,
)

REPRODUCIBLE_NOISE_WARNING = (
    "privacy.reproducible_noise = true: the noise and the Poisson participation were drawn "
    "from generators seeded by the run's seed. The printed epsilon does NOT hold against "
    "anyone who knows the seed (it is in config.toml and summary.json): they can regenerate "
    "the noise and subtract it. Use such runs for research only."
)


def noise_seed_statement(cfg) -> str:
    """Where the DP noise came from, in one sentence for summary and report."""
    if cfg.privacy.reproducible_noise:
        return REPRODUCIBLE_NOISE_WARNING
    return (
        "operating-system entropy: the noise cannot be regenerated from the config or the "
        "outputs (the checkpointed generator states are secret run state)"
    )


def holds_against(cfg) -> str:
    """Which parties the run's epsilon holds against, in one sentence."""
    if cfg.privacy.unit.value == "record":
        who = (
            "the server, an eavesdropper, other clients and anyone with the outputs, for "
            "each record of each client (DP-SGD noise is added inside the client); the "
            "number of examples each client holds is treated as public"
        )
    elif cfg.privacy.placement.value == "local":
        who = "the server, an eavesdropper, other clients and anyone with the outputs"
    else:
        who = (
            "other clients and anyone with the outputs; NOT the aggregator, which sees each "
            "clipped, un-noised message (with secure aggregation, their un-noised sum)"
        )
    if cfg.privacy.reproducible_noise:
        who += "; not against anyone who knows the seed"
    return who


def not_covered(relation: str) -> list[str]:
    """The parts of a run directory that no epsilon covers (keep them private)."""
    out = [
        "checkpoints/: the exact global adapters and the generator states that drew the noise "
        "(secret run state)",
        f"the '{NOT_COVERED}' fields of metrics.jsonl and summary.json: measured on raw "
        "client data inside a simulation",
    ]
    if relation == "add-remove":
        out.append(
            "everything that counts or names who took part, which the add-remove epsilon "
            "assumes hidden: the sampled, participants, failed, rejected, bytes_up and "
            "bytes_down fields of metrics.jsonl (round and stage-1 rows, and the stage-1 "
            "clients count), summary.json's communication totals, the totals in report.md "
            "and bytes.png. They are the aggregator's view"
        )
    return out


def noise_on_mean(cfg, sigma: float | None) -> NoiseOnMean | None:
    """The expected cohort n and the per-coordinate noise std on the averaged update:
    σ·C/n with central noise (added once to the sum), σ·C/√n with local noise."""
    if sigma is None:
        return None
    n = budget.expected_clients(cfg)
    central = cfg.privacy.placement.value == "central"
    std = sigma * cfg.privacy.clip_norm / (n if central else math.sqrt(n))
    return {
        "expected_clients_per_round": n,
        "std_per_coordinate": std,
        "formula": "sigma*C/n (central)" if central else "sigma*C/sqrt(n) (local)",
    }


def record_section(sim: ServerState, eps: dict | None) -> RecordPrivacy:
    """summary.json's record-level fields (``privacy.record``): the worst client's
    per-record ε and each client's own, and what DP-SGD ran."""
    cfg = sim.config
    record = sim.record_dp_sgd
    counts = sim.example_counts
    worst = (eps or {}).get(cfg.privacy.accountant)
    per_client = per_client_epsilon(sim.ledger, cfg.clients, cfg.privacy.accountant)
    declared: dict[str, float] = {}
    for row in rounds(sim.rows):
        declared.update(row.get("declared_record_epsilon", {}))
    return {
        "epsilon_worst_client": worst,
        "epsilon_per_client": per_client,
        # Flower: what each node declared its own record ledger stands at (its PLD ε,
        # at its own delta), last declaration per client; {} in the simulator.
        "declared_epsilon_per_client": dict(sorted(declared.items(), key=lambda kv: int(kv[0]))),
        "declared_epsilon_worst_client": max(declared.values()) if declared else None,
        "accountant": cfg.privacy.accountant,
        "dp_sgd": None if record is None else record.to_json(),
        "sample_rate_per_client": [
            None if record is None else record.sample_rate(n) for n in counts
        ],
        "space": cfg.privacy.record_space.value,
        "statement": (
            f"record-level DP: every client ran DP-SGD on its own examples (Poisson "
            f"sampling at q = batch / examples, each example's gradient clipped to "
            f"C = {cfg.privacy.clip_norm:g} in the {cfg.privacy.record_space.value} space, "
            f"noise multiplier {sim.noise_multiplier:g} per step); the worst client's "
            f"per-record epsilon is "
            + ("n/a" if worst is None else f"{worst:.3g}")
            + f" at delta {cfg.delta:g} ({cfg.privacy.accountant}, {sim.relation.value} of "
            "one example)"
        ),
    }


def utility(
    rows: list[MetricsRow], *, method: str, epsilon: float | None, delta: float
) -> UtilitySummary | None:
    """The final model against the base model on the same held-out questions.

    The first and last ``eval`` rows (before any training, and the final adapter) are
    compared question by question: the difference of accuracies with the standard error
    of the mean paired difference, and whether it exceeds twice that error.
    """
    scored = evals(rows)
    if len(scored) < 2 or scored[0]["round"] != 0 or scored[-1]["round"] == 0:
        return None
    before, after = scored[0]["correct"], scored[-1]["correct"]
    if len(before) != len(after) or len(before) < 2:
        return None
    d = [int(b) - int(a) for a, b in zip(before, after, strict=True)]
    n = len(d)
    diff = sum(d) / n
    se = math.sqrt(sum((x - diff) ** 2 for x in d) / (n - 1) / n)
    better = diff > 2 * se
    privacy = f"at epsilon {epsilon:.3g} (delta {delta:g})" if epsilon else "without DP"
    verdict = (
        "better than the base model by more than twice the standard error"
        if better
        else "NOT better than the base model by more than twice the standard error"
    )
    return {
        "questions": n,
        "base_accuracy": before.count("1") / n,
        "final_accuracy": after.count("1") / n,
        "difference": diff,
        "standard_error": se,
        "better_than_base": better,
        "statement": (
            f"{method} {privacy}: held-out accuracy {after.count('1') / n:.3f} vs the base "
            f"model's {before.count('1') / n:.3f} on {n} questions, difference {diff:+.3f} "
            f"± {se:.3f} (paired standard error): {verdict}."
        ),
    }


def summarize(sim: ServerState) -> Summary:
    cfg, rows = sim.config, sim.rows
    done = rounds(rows)
    eps = sim.epsilons()
    recon = [
        r[NOT_COVERED]["reconstruction"]
        for r in done
        if NOT_COVERED in r and "reconstruction" in r[NOT_COVERED]
    ]
    full_bytes = sim.layout.dim * 4
    privacy: PrivacySummary = {"private": sim.spec.private}
    if sim.spec.private:
        privacy.update(
            {
                "delta": cfg.delta,
                "epsilon": eps,
                "relation": sim.relation.value,
                "relation_warning": sim.relation_warning,
                "holds_against": holds_against(cfg),
                "noise_seed": noise_seed_statement(cfg),
                "reproducible_noise": cfg.privacy.reproducible_noise,
                "not_covered": not_covered(sim.relation.value),
                "noise_multiplier": sim.noise_multiplier,
                "sigma_source": sim.sigma_source,
                "clip_norm": cfg.privacy.clip_norm,
                "placement": cfg.privacy.placement.value,
                "clip_point": cfg.privacy.clip_point.value,
                "aggregation": cfg.privacy.aggregation.value,
                "sampling": f"{cfg.sampling.scheme.value} (rate {cfg.sampling.rate:g})"
                if cfg.sampling.scheme.value == "poisson"
                else f"fixed ({cfg.sampling.per_round} per round)",
                "noise_on_mean": noise_on_mean(cfg, sim.noise_multiplier),
                "target_epsilon": cfg.target_epsilon,
                "accountant": cfg.privacy.accountant,
                "charges": sim.ledger.charges(),
                "participation": {str(c): n for c, n in sim.ledger.participation().items()},
                "gdp_clt": sim.ledger.uses_clt(),
            }
        )
        privacy["unit"] = cfg.privacy.unit.value
        if sim.record_level:
            # The client-level fields do not apply.
            privacy.update({"placement": None, "clip_point": None, "noise_on_mean": None})
            privacy["record"] = record_section(sim, eps)
        if sim.count_noise is not None:
            privacy["adaptive_clipping"] = {
                "target_quantile": cfg.privacy.clip_quantile,
                "clip_lr": cfg.privacy.clip_lr,
                "count_noise": sim.count_noise,
                "update_noise_multiplier": sim.update_noise_multiplier,
                "initial_clip_norm": cfg.privacy.clip_norm,
                "next_clip_norm": sim.clip_norm,
                "note": "noise_multiplier is the effective multiplier of each round's update "
                "and count release together, (z_update^-2 + (2 sigma_b)^-2)^-1/2",
            }
        if stage1(rows) is not None:
            privacy["statistics"] = (
                f"Gaussian, noise multiplier {cfg.stage1.noise_multiplier:g}, clip "
                f"{cfg.stage1.clip_norm:g}, charged once to every client"
                if cfg.stage1.release_noise
                else "released WITHOUT noise: no finite epsilon"
            )
    summary: Summary = {
        "method": cfg.method.value,
        "model": cfg.model.name,
        "task": cfg.data.task.value,
        "clients": cfg.clients,
        "seed": cfg.seed,
        "rounds_planned": cfg.rounds,
        "rounds_done": sim.round,
        "stop_reason": sim.stop_reason,
        "privacy": privacy,
        "utility": utility(
            rows,
            method=cfg.method.value,
            epsilon=(eps or {}).get(cfg.privacy.accountant),
            delta=cfg.delta,
        ),
        "communication": {
            "codec": sim.codec.name,
            "latent_dim": sim.codec.latent_dim,
            "bytes_per_upload": sim.codec.bytes_per_upload,
            "full_dim": sim.layout.dim,
            "full_bytes": full_bytes,
            "total_up": sum(r.get("bytes_up", 0) for r in rows),
            "total_down": sum(r.get("bytes_down", 0) for r in rows),
        },
        NOT_COVERED: {
            "note": "measured on raw client data inside a simulation; no epsilon covers "
            "these numbers",
            # Each client's dataset size is part of its data under replace-one.
            "examples_per_client": sim.workload.description.get("examples_per_client"),
            **(
                {
                    "reconstruction": {
                        "rel_error": sum(r["rel_error"] for r in recon) / len(recon),
                        "cosine": sum(r["cosine"] for r in recon) / len(recon),
                    }
                }
                if recon
                else {}
            ),
        },
        "run": {
            "drencoder": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds in rounds": round(sum(r["seconds"] for r in done), 1),
            # Work a repeat call does not redo: converting the model into the cache folder
            # (inside loading it) and computing prefix states that were not cached yet.
            "one-time work": sim.one_time_work(),
        },
    }
    return check_summary(summary)


def write_outputs(sim: ServerState) -> Summary:
    run_dir = sim.run_dir
    sim.model.save_pretrained(run_dir / "adapter")
    summary = summarize(sim)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    plots = plot_run(sim.rows, run_dir)
    write_report(run_dir, summary=summary, rows=sim.rows, plots=plots)
    return summary
