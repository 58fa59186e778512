"""Does private cross-device fine-tuning make the model better? Held-out accuracy over seeds.

Runs a preset (default ``demo``) for every seed with ``fedavg-lora`` (no DP) and with
``dp-fedavg-lora`` at each target ε, each as its own ``drencoder run`` in a fresh process
(``--jobs`` at a time, one torch thread each), and reads every run's ``summary.json``:
the base model's and the final model's accuracy on the same held-out questions, their
paired difference with its standard error, ε under each accountant, σ, the expected
clients per round and the per-coordinate noise on the mean, σ·C/n.

Reported per setting: mean ± standard error over seeds of the final accuracy and of the
gain over the base model, and for each DP setting the share of the non-private gain it
keeps. ``--nodp-set KEY=VALUE`` applies to the non-private arm only: each arm runs with
its own tuned server learning rate (the `cross-device` preset's is tuned for DP; the
non-private arm's best is 0.003, docs/results.md). Runs that already finished (a
``summary.json`` in their directory) are reused, so an interrupted call continues
(``--finished-only`` summarises what finished and starts nothing). Writes
``results/cross_device_utility_<preset>.json``.

    python benchmarks/cross_device_utility.py --preset demo --seeds 0,1,2 --epsilons 8,2,1
    python benchmarks/cross_device_utility.py --preset cross-device --epsilons 8,2,1 \
        --nodp-set server.lr=0.003
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine, sig, write

from drencoder.reporting.schema import load_metrics, rounds

ROOT = Path(__file__).resolve().parent.parent


def run(out: Path, preset: str, seed: int, epsilon: float | None, extra: list[str]) -> dict:
    if not (out / "summary.json").exists():
        sets = [f"seed={seed}", *extra]
        if epsilon is None:
            sets += ["method=fedavg-lora", "target_epsilon=none"]
        else:
            sets += [f"target_epsilon={epsilon:g}"]
        if out.exists():  # an interrupted run: continue it
            cmd = ["--resume", str(out)]
        else:
            cmd = ["--preset", preset, *[a for s in sets for a in ("--set", s)], "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(
            [str(Path(sys.executable).with_name("drencoder")), "run", "--no-progress", *cmd],
            check=True,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    summary = json.loads((out / "summary.json").read_text())
    done = rounds(load_metrics(out / "metrics.jsonl"))
    u = summary["utility"]
    privacy = summary["privacy"]
    config = summary.get("clients")
    per_round = statistics.mean(len(r["sampled"]) for r in done) if done else 0.0
    row = {
        "seed": seed,
        "method": summary["method"],
        "target_epsilon": epsilon,
        "base_accuracy": u["base_accuracy"],
        "final_accuracy": u["final_accuracy"],
        "gain": u["difference"],
        "gain_se": u["standard_error"],
        "better_than_base": u["better_than_base"],
        "clients": config,
        "mean_sampled_per_round": round(per_round, 1),
        "rounds_done": summary["rounds_done"],
        "seconds_in_rounds": summary["run"]["seconds in rounds"],
    }
    if privacy["private"]:
        row.update(
            {
                "unit": privacy.get("unit", "client"),
                "epsilon": privacy["epsilon"],
                "relation": privacy["relation"],
                "noise_multiplier": privacy["noise_multiplier"],
                "clip_norm": privacy["clip_norm"],
            }
        )
        noise = privacy["noise_on_mean"]  # None with record-level DP
        if noise is not None:
            row["expected_clients_per_round"] = noise["expected_clients_per_round"]
            row["noise_std_on_mean_per_coordinate"] = noise["std_per_coordinate"]
        if privacy.get("record"):
            rec = privacy["record"]
            row["record_epsilon_worst_client"] = rec["epsilon_worst_client"]
            row["record_dp_sgd"] = rec["dp_sgd"]
    return row


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.mean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def add_run_arguments(parser: argparse.ArgumentParser, *, preset: str, out: str) -> None:
    """The arguments every over-seeds utility benchmark takes."""
    parser.add_argument("--preset", default=preset)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=out)
    parser.add_argument("--name", help="results file name (default: from the preset)")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="start nothing: summarise the runs that already finished",
    )


def accuracy_summary(mine: list[dict]) -> dict:
    """Mean ± standard error over seeds of the final accuracy and of the paired gain."""
    acc, acc_se = mean_se([r["final_accuracy"] for r in mine])
    gain, gain_se = mean_se([r["gain"] for r in mine])
    return {
        "seeds": len(mine),
        "base_accuracy": mine[0]["base_accuracy"],
        "final_accuracy_mean": sig(acc, 4),
        "final_accuracy_se": sig(acc_se, 3),
        "gain_mean": sig(gain, 4),
        "gain_se_over_seeds": sig(gain_se, 3),
        "per_seed_final_accuracy": [r["final_accuracy"] for r in mine],
        "runs_better_than_base_by_2se": sum(r["better_than_base"] for r in mine),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, preset="demo", out="runs/cross-device-utility")
    parser.add_argument("--epsilons", default="8,2,1")
    parser.add_argument(
        "--nodp-set",
        dest="nodp_extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the non-private arm only (its own tuned server.lr, say)",
    )
    args = parser.parse_args()
    info = machine()
    seeds = [int(s) for s in args.seeds.split(",")]
    settings: list[float | None] = [None, *(float(e) for e in args.epsilons.split(","))]
    out = ROOT / args.out / args.preset
    jobs = [
        (out / f"{'nodp' if e is None else f'eps{e:g}'}_seed{s}", s, e)
        for e in settings
        for s in seeds
    ]
    if args.finished_only:
        jobs = [j for j in jobs if (j[0] / "summary.json").exists()]

    def start(job):
        path, seed, epsilon = job
        extra = args.extra + (args.nodp_extra if epsilon is None else [])
        return run(path, args.preset, seed, epsilon, extra)

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(start, jobs))
    table = []
    nodp_gain = None
    for e in settings:
        mine = [r for r in rows if r["target_epsilon"] == e]
        if not mine:
            continue
        gain = mean_se([r["gain"] for r in mine])[0]
        if e is None:
            nodp_gain = gain
        entry = {
            "setting": "fedavg-lora (no DP)" if e is None else f"dp-fedavg-lora, epsilon <= {e:g}",
            **accuracy_summary(mine),
        }
        if e is not None:
            entry["pld_epsilon_max"] = sig(max(r["epsilon"]["pld"] for r in mine), 4)
            entry["noise_multiplier"] = sig(mine[0]["noise_multiplier"], 4)
            entry["noise_std_on_mean_per_coordinate"] = sig(
                mine[0]["noise_std_on_mean_per_coordinate"], 3
            )
            entry["expected_clients_per_round"] = mine[0]["expected_clients_per_round"]
            if nodp_gain:
                entry["share_of_nodp_gain"] = sig(gain / nodp_gain, 3)
        table.append(entry)
        print(json.dumps(entry))
    write(
        args.name or f"cross_device_utility_{args.preset}",
        {
            "benchmark": "cross_device_utility",
            **info,
            "preset": args.preset,
            "extra_settings": args.extra,
            "nodp_settings": args.nodp_extra,
            "table": table,
            "runs": rows,
        },
    )


if __name__ == "__main__":
    main()
