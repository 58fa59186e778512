"""``report.md``: what a run did, what it cost, and how it compares, in plain Markdown.

The report is written from the run's summary and metrics rows only, so it can be rebuilt
from a run directory at any time. Numbers are printed as measured; when DR-Encoder loses
to a baseline the table shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from drencoder.reporting.schema import MetricsRow, Summary, evals

ACCOUNTANTS = ("gdp", "rdp", "pld")


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def write_report(
    run_dir: str | Path,
    *,
    summary: Summary,
    rows: Sequence[MetricsRow],
    plots: Mapping[str, str],
) -> Path:
    """Write ``report.md`` into ``run_dir`` and return its path."""
    run_dir = Path(run_dir)
    s = summary
    scored = evals(rows)
    before = scored[0] if scored else None
    after = scored[-1] if len(scored) > 1 else None
    lines = [
        f"# drencoder run: `{s['method']}` on `{s['model']}`",
        "",
        f"{s['clients']} clients, {s['rounds_done']} of {s['rounds_planned']} rounds, "
        f"task `{s['task']}`, seed {s['seed']}. {s.get('stop_reason', '')}".rstrip(),
        "",
        "## Utility",
        "",
        "| | round | accuracy | held-out loss | questions |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in (("before fine-tuning", before), ("after fine-tuning", after)):
        if r is not None:
            lines.append(
                f"| {label} | {r['round']} | {_fmt(r['accuracy'])} | {_fmt(r['heldout_loss'])} "
                f"| {r['questions']} |"
            )
    if before and after:
        lines += [
            "",
            f"Accuracy changed by {after['accuracy'] - before['accuracy']:+.4f} and held-out "
            f"loss by {after['heldout_loss'] - before['heldout_loss']:+.4f}. With "
            f"{after['questions']} questions one question is {1 / after['questions']:.3f} of "
            "accuracy; small differences are noise.",
        ]
    if s.get("utility"):
        lines += ["", f"**Result.** {s['utility']['statement']}"]
    lines += ["", f"![utility and loss per round]({plots['utility']})", "", "## Privacy", ""]
    priv = s["privacy"]
    if priv.get("private"):
        if priv.get("reproducible_noise"):
            lines += [f"> **Warning.** {priv['noise_seed']}", ""]
        if priv.get("relation_warning"):
            lines += [f"> **Warning.** {priv['relation_warning']}", ""]
        lines += [
            f"Client-level (epsilon, delta = {priv['delta']:g}) after the last round, worst "
            f"client, under the **{priv['relation']}** neighbouring relation. It holds "
            f"against {priv['holds_against']}.",
            "",
            "| accountant | epsilon |",
            "|---|---:|",
            *[f"| {a} | {_fmt(priv['epsilon'][a])} |" for a in ACCOUNTANTS],
            "",
            f"- noise multiplier sigma = {_fmt(priv['noise_multiplier'])} "
            f"({priv['sigma_source']}), clip norm C = {_fmt(priv['clip_norm'])}",
            *(
                [
                    f"- about {_fmt(priv['noise_on_mean']['expected_clients_per_round'])} "
                    "clients per round; noise std per coordinate of the averaged update "
                    f"{priv['noise_on_mean']['std_per_coordinate']:.3g} "
                    f"({priv['noise_on_mean']['formula']}, initial C)"
                ]
                if priv.get("noise_on_mean")
                else []
            ),
            f"- noise placement `{priv['placement']}`, clip point `{priv['clip_point']}`, "
            f"aggregation `{priv['aggregation']}`, sampling `{priv['sampling']}`",
            f"- budget: target epsilon {_fmt(priv['target_epsilon'])} under `{priv['accountant']}`",
            f"- ledger charges: {priv['charges']} (each charged when its tasks were sent, "
            "never refunded)",
            f"- noise source: {priv['noise_seed']}",
            "- not covered by epsilon (keep private): " + "; ".join(priv.get("not_covered", [])),
        ]
        if priv.get("statistics"):
            lines.append(f"- stage-1 statistics release: {priv['statistics']}")
        if priv.get("gdp_clt"):
            lines.append(
                "- gdp uses the central-limit approximation here and can understate epsilon."
            )
        lines += ["", f"![epsilon per round]({plots['epsilon']})"]
    else:
        lines.append("No noise is added: this method has no differential privacy guarantee.")
    comm = s["communication"]
    lines += [
        "",
        "## Communication",
        "",
        "| | floats per upload | bytes per upload | vs full LoRA update |",
        "|---|---:|---:|---:|",
        f"| `{s['method']}` ({comm['codec']}) | {_fmt(comm['latent_dim'])} | "
        f"{_fmt(comm['bytes_per_upload'])} | {comm['bytes_per_upload'] / comm['full_bytes']:.4f} |",
        f"| `dp-fedavg-lora` (full update) | {_fmt(comm['full_dim'])} | "
        f"{_fmt(comm['full_bytes'])} | 1 |",
        "",
        f"Total uplink {_fmt(comm['total_up'])} bytes, downlink {_fmt(comm['total_down'])} bytes "
        "(the `dp-fedavg-lora` row is computed from the adapter layout, float32).",
    ]
    raw = s.get("not_covered_by_epsilon") or {}
    if raw.get("reconstruction"):
        rec = raw["reconstruction"]
        lines += [
            "",
            "Reconstruction of the real uploads by the codec (before noise): relative error "
            f"{_fmt(rec['rel_error'])}, cosine {_fmt(rec['cosine'])} (mean over uploads). "
            "**Not covered by epsilon**: a simulation diagnostic computed on raw client "
            "updates, which a real server never sees.",
        ]
    lines += ["", f"![bytes per round]({plots['bytes']})", "", "## Run", ""]
    lines += [f"- {k}: {v}" for k, v in s.get("run", {}).items()]
    lines.append("")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
