"""The comparison's numbers: per (method, ε) means and spreads over seeds, and verdicts.

A verdict compares ``dr-encoder`` with each other method at the same ε on every utility
metric: the difference of the seed means and its standard error, √(s₁²/n₁ + s₂²/n₂) with
sample standard deviations over seeds, plus for accuracies the binomial variance of
scoring a finite question set, p(1−p)/(questions·n) per side. It says "better" or "worse"
only when the difference exceeds two standard errors, otherwise "no clear difference";
with a handful of seeds this is a coarse screen, not a significance test, and the report
says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from drencoder.compare.plan import CompareSpec

ACCOUNTANTS = ("gdp", "rdp", "pld")
PRIMARY = "dr-encoder"


def stat(values: Sequence[float | None], *, questions: int | None = None) -> dict:
    """Mean, sample standard deviation and the values (None values are skipped).

    ``questions``: the values are accuracies over that many questions each.
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out = {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals), "values": vals}
    if questions:
        out["questions"] = questions
    return out


def _variance_of_mean(s: dict) -> float:
    var = s["sd"] ** 2 / s["n"]
    if s.get("questions"):
        p = s["mean"]
        var += p * (1 - p) / (s["questions"] * s["n"])
    return var


def accuracy_metrics(record: dict) -> dict[str, tuple[float, bool, int | None]]:
    """``{metric: (value, higher_is_better, questions)}`` of one run's utility."""
    run = record["run_task"]
    out = {f"{record['task']} accuracy (run eval)": (run["accuracy"], True, run["n"])}
    out["held-out loss"] = (run["heldout_loss"], False, None)
    for task, score in sorted(record["tasks"].items()):
        out[f"{task} accuracy"] = (score["accuracy"], True, score["n"])
    return out


def group_row(method: str, eps: float | None, records: Sequence[dict]) -> dict:
    metrics: dict[str, dict] = {}
    names = accuracy_metrics(records[0])
    for name, (_, _, questions) in names.items():
        metrics[name] = stat([accuracy_metrics(r)[name][0] for r in records], questions=questions)
    for acc in ACCOUNTANTS:
        metrics[f"epsilon {acc}"] = stat([(r["epsilon"] or {}).get(acc) for r in records])
    metrics["sigma"] = stat([r["noise_multiplier"] for r in records])
    metrics["uplink bytes"] = stat([r["bytes_per_upload"] for r in records])
    metrics["wall seconds"] = stat([r["wall_seconds"] for r in records])
    metrics["rounds done"] = stat([r["rounds_done"] for r in records])
    return {
        "method": method,
        "target_epsilon": eps,
        "seeds": sorted(r["seed"] for r in records),
        "higher_is_better": {k: v[1] for k, v in names.items()},
        "metrics": metrics,
        "stopped_early": sorted({r["stop_reason"] for r in records if r["stop_reason"]}),
    }


def verdict(a: dict, b: dict, *, higher_is_better: bool) -> dict:
    """``a`` (DR-Encoder) against ``b`` on one metric."""
    if not a["n"] or not b["n"]:
        return {"delta": None, "se": None, "verdict": "not measured"}
    delta = a["mean"] - b["mean"]
    se = math.sqrt(_variance_of_mean(a) + _variance_of_mean(b))
    good = delta if higher_is_better else -delta
    word = "no clear difference"
    if abs(delta) > 2 * se:
        word = "better" if good > 0 else "worse"
    return {"delta": delta, "se": se, "verdict": word}


def summarize_comparison(spec: CompareSpec, records: Sequence[dict], *, base: dict) -> dict:
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["target_epsilon"]), []).append(r)
    rows = [group_row(m, e, rs) for (m, e), rs in groups.items()]
    verdicts = []
    by_key = {(row["method"], row["target_epsilon"]): row for row in rows}
    for eps in spec.epsilons:
        primary = by_key.get((PRIMARY, eps))
        if primary is None:
            continue
        for row in rows:
            if row["method"] == PRIMARY or row["target_epsilon"] not in (eps, None):
                continue
            for name, higher in primary["higher_is_better"].items():
                if name not in row["metrics"]:
                    continue
                v = verdict(primary["metrics"][name], row["metrics"][name], higher_is_better=higher)
                verdicts.append({"epsilon": eps, "baseline": row["method"], "metric": name, **v})
    return {
        "spec": spec.to_json(),
        "rows": rows,
        "verdicts": verdicts,
        "base": base,
        "records": list(records),
    }
