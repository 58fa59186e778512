"""PNG plots of a run from its ``metrics.jsonl`` rows (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker

from drencoder.reporting.schema import MetricsRow, evals, rounds

ACCOUNTANTS = ("gdp", "rdp", "pld")


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def plot_run(rows: Sequence[MetricsRow], out_dir: str | Path) -> dict[str, str]:
    """Write utility/loss, epsilon and bytes plots; returns ``{name: file name}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, scored = rounds(rows), evals(rows)
    files: dict[str, str] = {}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if scored:
        ax1.plot([r["round"] for r in scored], [r["accuracy"] for r in scored], "o-")
    ax1.set(xlabel="round", ylabel="held-out accuracy", title="utility")
    ax1.grid(alpha=0.3)
    # Only the server's own held-out evaluation: the clients' training loss is raw data
    # that no epsilon covers, and a real server never receives it.
    if scored:
        ax2.plot(
            [r["round"] for r in scored],
            [r["heldout_loss"] for r in scored],
            "s--",
            label="held-out",
        )
    ax2.set(xlabel="round", ylabel="held-out loss", title="loss")
    _legend(ax2)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "utility.png", dpi=110)
    plt.close(fig)
    files["utility"] = "utility.png"

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name in ACCOUNTANTS:
        pts = [
            (r["round"], r["epsilon"][name])
            for r in done
            if r.get("epsilon") and r["epsilon"].get(name) is not None
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=name)
    ax.set(xlabel="round", ylabel="epsilon (worst client)", title="privacy spent")
    if not any(r.get("epsilon") for r in done):
        ax.text(0.5, 0.5, "no noise: no DP guarantee", ha="center", transform=ax.transAxes)
    _legend(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "epsilon.png", dpi=110)
    plt.close(fig)
    files["epsilon"] = "epsilon.png"

    fig, ax = plt.subplots(figsize=(5, 3.6))
    if done:
        xs = [r["round"] for r in done]
        ax.bar([x - 0.2 for x in xs], [r["bytes_up"] for r in done], 0.4, label="uplink")
        ax.bar([x + 0.2 for x in xs], [r["bytes_down"] for r in done], 0.4, label="downlink")
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="bytes", title="communication per round")
    _legend(ax)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out_dir / "bytes.png", dpi=110)
    plt.close(fig)
    files["bytes"] = "bytes.png"
    return files


def plot_comparison(result: dict, out_dir: str | Path) -> dict[str, str]:
    """Utility against ε and against uplink bytes, one panel per utility metric."""
    out_dir = Path(out_dir)
    rows = result["rows"]
    metrics = list(rows[0]["higher_is_better"])
    private = sorted({r["method"] for r in rows if r["target_epsilon"] is not None})
    reference = [r for r in rows if r["target_epsilon"] is None]
    files: dict[str, str] = {}

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in private:
            pts = sorted(
                (r["target_epsilon"], r["metrics"][metric])
                for r in rows
                if r["method"] == method and r["target_epsilon"] is not None
            )
            xs = [p[0] for p in pts]
            ax.errorbar(
                xs,
                [p[1]["mean"] for p in pts],
                yerr=[p[1]["sd"] for p in pts],
                marker="o",
                capsize=3,
                label=method,
            )
        for r in reference:
            ax.axhline(r["metrics"][metric]["mean"], ls="--", c="grey", label=r["method"])
        ax.set_xscale("log")
        # Ticks at the targets themselves, written as plain numbers (not 2 x 10^0).
        targets = sorted({r["target_epsilon"] for r in rows} - {None})
        ax.set_xticks(targets, [f"{e:g}" for e in targets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel="target epsilon", ylabel=metric, title=f"{metric} vs epsilon")
        ax.grid(alpha=0.3)
    _legend(axes[0][0])
    fig.tight_layout()
    fig.savefig(out_dir / "utility_vs_epsilon.png", dpi=110)
    plt.close(fig)
    files["utility vs epsilon"] = "utility_vs_epsilon.png"

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    markers = dict(zip(sorted({r["method"] for r in rows}), "osD^vP*X", strict=False))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for r in rows:
            eps = r["target_epsilon"]
            ax.errorbar(
                r["metrics"]["uplink bytes"]["mean"],
                r["metrics"][metric]["mean"],
                yerr=r["metrics"][metric]["sd"],
                marker=markers[r["method"]],
                capsize=3,
                ls="none",
                label=f"{r['method']} (ε={eps:g})" if eps is not None else r["method"],
            )
        ax.set_xscale("log")
        ax.set(xlabel="uplink bytes per client per round", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out_dir / "utility_vs_bytes.png", dpi=110)
    plt.close(fig)
    files["utility vs uplink bytes"] = "utility_vs_bytes.png"
    return files
