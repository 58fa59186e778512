"""PNG plots of a run from its ``metrics.jsonl`` rows (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ACCOUNTANTS = ("gdp", "rdp", "pld")


def _rounds(rows: Sequence[dict], kind: str) -> list[dict]:
    return [r for r in rows if r.get("kind") == kind]


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def plot_run(rows: Sequence[dict], out_dir: str | Path) -> dict[str, str]:
    """Write utility/loss, epsilon and bytes plots; returns ``{name: file name}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds, evals = _rounds(rows, "round"), _rounds(rows, "eval")
    files: dict[str, str] = {}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if evals:
        ax1.plot([r["round"] for r in evals], [r["accuracy"] for r in evals], "o-")
    ax1.set(xlabel="round", ylabel="held-out accuracy", title="utility")
    ax1.grid(alpha=0.3)
    if rounds:
        ax2.plot([r["round"] for r in rounds], [r["loss"] for r in rounds], "o-", label="train")
    if evals:
        ax2.plot(
            [r["round"] for r in evals], [r["heldout_loss"] for r in evals], "s--", label="held-out"
        )
    ax2.set(xlabel="round", ylabel="loss", title="loss")
    _legend(ax2)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "utility.png", dpi=110)
    plt.close(fig)
    files["utility"] = "utility.png"

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name in ACCOUNTANTS:
        pts = [(r["round"], r["epsilon"][name]) for r in rounds if r.get("epsilon")]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=name)
    ax.set(xlabel="round", ylabel="epsilon (worst client)", title="privacy spent")
    if not any(r.get("epsilon") for r in rounds):
        ax.text(0.5, 0.5, "no noise: no DP guarantee", ha="center", transform=ax.transAxes)
    _legend(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "epsilon.png", dpi=110)
    plt.close(fig)
    files["epsilon"] = "epsilon.png"

    fig, ax = plt.subplots(figsize=(5, 3.6))
    if rounds:
        xs = [r["round"] for r in rounds]
        ax.bar([x - 0.2 for x in xs], [r["bytes_up"] for r in rounds], 0.4, label="uplink")
        ax.bar([x + 0.2 for x in xs], [r["bytes_down"] for r in rounds], 0.4, label="downlink")
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="bytes", title="communication per round")
    _legend(ax)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out_dir / "bytes.png", dpi=110)
    plt.close(fig)
    files["bytes"] = "bytes.png"
    return files
