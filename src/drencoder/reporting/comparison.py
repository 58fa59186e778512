"""A comparison's outputs: ``results.json``, ``results.csv`` (one line per run), plots and
``report.md`` (the table of docs/design.md §5, the verdicts and what they rest on)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from drencoder.reporting.plots import plot_comparison

ACCOUNTANTS = ("gdp", "rdp", "pld")


def _ms(stat: dict, digits: int = 3) -> str:
    if not stat or stat["mean"] is None:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _eps(row: dict) -> str:
    if row["target_epsilon"] is None:
        return "∞ (no DP)"
    m = row["metrics"]
    return " / ".join(_ms(m[f"epsilon {a}"], 2).split(" ±")[0] for a in ACCOUNTANTS)


def write_csv(path: Path, records: list[dict]) -> None:
    tasks = sorted({t for r in records for t in r["tasks"]})
    fields = [
        "name",
        "method",
        "target_epsilon",
        "seed",
        *(f"epsilon_{a}" for a in ACCOUNTANTS),
        "noise_multiplier",
        "clip_norm",
        "bytes_per_upload",
        "run_task",
        "run_task_accuracy",
        "heldout_loss",
        *(f"{t}_accuracy" for t in tasks),
        "rounds_done",
        "wall_seconds",
    ]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in records:
            eps = r["epsilon"] or {}
            w.writerow(
                {
                    "name": r["name"],
                    "method": r["method"],
                    "target_epsilon": r["target_epsilon"],
                    "seed": r["seed"],
                    **{f"epsilon_{a}": eps.get(a) for a in ACCOUNTANTS},
                    "noise_multiplier": r["noise_multiplier"],
                    "clip_norm": r["clip_norm"],
                    "bytes_per_upload": r["bytes_per_upload"],
                    "run_task": r["task"],
                    "run_task_accuracy": r["run_task"]["accuracy"],
                    "heldout_loss": r["run_task"]["heldout_loss"],
                    **{f"{t}_accuracy": r["tasks"].get(t, {}).get("accuracy") for t in tasks},
                    "rounds_done": r["rounds_done"],
                    "wall_seconds": r["wall_seconds"],
                }
            )


def report_markdown(result: dict, plots: dict[str, str]) -> str:
    spec, rows, records = result["spec"], result["rows"], result["records"]
    first = records[0]
    utility = list(rows[0]["higher_is_better"])
    seeds = ", ".join(str(s) for s in spec["seeds"])
    delta = next((r["delta"] for r in records if r["delta"] is not None), None)
    n_tasks = {t: s["n"] for t, s in first["tasks"].items()}
    lines = [
        "# Method comparison",
        "",
        f"Methods {', '.join(spec['methods'])}; target ε {spec['epsilons']}"
        + (f" at δ = {delta:g}" if delta is not None else "")
        + f"; seeds {seeds}. Each cell is the mean ± sample standard deviation over seeds.",
        f"Training task: {first['task']} (held-out questions: {first['run_task']['n']}, "
        f"{first['run_task']['shots']}-shot). Extra tasks scored on each final adapter: "
        + (", ".join(f"{t} ({n} questions)" for t, n in n_tasks.items()) if n_tasks else "none")
        + (
            ""
            if not n_tasks
            else f", {spec['shots']}-shot"
            if spec["shots"] is not None
            else ", default shots of each task"
        )
        + ".",
        "σ is calibrated per method so that its own events (stage-1 statistics included for "
        "dr-encoder) reach the target ε; ε columns are what the ledger charged "
        "(gdp / rdp / pld, worst client), under the "
        + " / ".join(
            sorted({str(r.get("relation")) for r in records if r.get("relation")}) or ["n/a"]
        )
        + " neighbouring relation.",
        "",
        "| method | target ε | ε gdp / rdp / pld | σ | uplink bytes per client per round | "
        + " | ".join(utility)
        + " | wall s |",
        "|---|---|---|---|---|" + "---|" * len(utility) + "---|",
    ]
    for row in sorted(
        rows, key=lambda r: (r["target_epsilon"] is None, r["target_epsilon"] or 0, r["method"])
    ):
        m = row["metrics"]
        lines.append(
            f"| {row['method']} | {row['target_epsilon'] if row['target_epsilon'] else '–'} | "
            f"{_eps(row)} | {_ms(m['sigma'], 3) if m['sigma']['n'] else '–'} | "
            f"{int(m['uplink bytes']['mean']):,} | "
            + " | ".join(_ms(m[u], 4 if "loss" in u else 3) for u in utility)
            + f" | {m['wall seconds']['mean']:.0f} |"
        )
    base_acc = [r["run_task"]["initial_accuracy"] for r in records]
    base_loss = [r["run_task"]["initial_heldout_loss"] for r in records]
    base_line = (
        f"Base model before fine-tuning: {first['task']} accuracy "
        f"{sum(base_acc) / len(base_acc):.3f}, held-out loss {sum(base_loss) / len(base_loss):.4f}"
    )
    for t, s in sorted(result["base"].get("tasks", {}).items()):
        base_line += f", {t} accuracy {s['accuracy']:.3f}"
    lines += ["", base_line + "."]
    stopped = [(r["method"], r["target_epsilon"], r["stopped_early"]) for r in rows]
    for method, eps, reasons in stopped:
        for reason in reasons:
            lines.append(f"- {method} at ε = {eps}: {reason}")
    lines += [
        "",
        "## DR-Encoder against each baseline at the same ε",
        "",
        "Δ = dr-encoder minus baseline (mean over seeds), ± its standard error. A verdict "
        "says better or worse only when |Δ| exceeds two standard errors; with few seeds "
        "this is a coarse screen, not a significance test.",
        "",
        "| ε | baseline | metric | Δ | verdict |",
        "|---|---|---|---|---|",
    ]
    for v in result["verdicts"]:
        d = "–" if v["delta"] is None else f"{v['delta']:+.4f} ± {v['se']:.4f}"
        lines.append(
            f"| {v['epsilon']:g} | {v['baseline']} | {v['metric']} | {d} | {v['verdict']} |"
        )
    if not result["verdicts"]:
        lines.append("| – | – | – | – | dr-encoder not in this comparison |")
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({file})" for name, file in plots.items()]
    lines += [
        "",
        "Per-run numbers: `results.csv`; everything: `results.json`; each run's own "
        "directory (config, metrics, ledger, report): `runs/`.",
        "",
    ]
    return "\n".join(lines)


def write_comparison(out_dir: str | Path, result: dict) -> dict[str, str]:
    out_dir = Path(out_dir)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    write_csv(out_dir / "results.csv", result["records"])
    plots = plot_comparison(result, out_dir)
    (out_dir / "report.md").write_text(report_markdown(result, plots))
    return plots
