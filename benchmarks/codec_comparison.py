"""DR-Encoder's codecs end to end: held-out accuracy at the same ε and the same uplink bytes.

Runs a cross-device preset (default ``demo``) at one target ε for every seed and every arm:

- ``dp-fedavg-lora``: the full LoRA update, clipped and noised (the accuracy to reach);
- ``dp-random-projection``: a seeded random k-dimensional projection (the bytes to beat);
- ``dr-encoder`` with each structured basis named in ``--bases`` (``codec.basis``), and
  with the paper's auto-encoder if ``autoencoder`` is among them;
- ``dp-fedavg-lora+lr-scaled``: the strawman, the full update with the server learning
  rate multiplied by k/d;
- any arm given with ``--arm NAME:KEY=VALUE,KEY=VALUE`` (e.g. a basis with other settings).

Each arm is an ordinary ``drencoder run`` with the arm's overrides (those of
``drencoder compare --variants``), in a fresh process with one torch thread, ``--jobs`` at
a time. Reported per arm: mean ± standard error over seeds of the final held-out accuracy
and of its gain over the base model (paired, same questions), the bytes each client sends
per round, ε and σ. Finished runs (a ``summary.json``) are reused, so an interrupted call
continues. Writes ``results/codec_comparison_<preset>.json``.

    python benchmarks/codec_comparison.py --preset demo --seeds 0,1,2 --epsilon 8
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine, sig, write
from cross_device_utility import accuracy_summary, add_run_arguments, run

from drencoder.compare.plan import variant_overrides
from drencoder.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def arms(preset: str, bases: list[str]) -> dict[str, list[str]]:
    """Arm name → the ``--set`` overrides of its run."""
    base = load_config(preset=preset)
    out = {
        "dp-fedavg-lora": ["method=dp-fedavg-lora"],
        "dp-random-projection": ["method=dp-random-projection"],
    }
    for basis in bases:
        if basis == "autoencoder":
            out["dr-encoder"] = ["method=dr-encoder"]
            continue
        method, sets = variant_overrides(f"dr-encoder+{basis}", base)
        out[f"dr-encoder+{basis}"] = [f"method={method.value}", *sets]
    method, sets = variant_overrides("dp-fedavg-lora+lr-scaled", base)
    out["dp-fedavg-lora+lr-scaled"] = [f"method={method.value}", *sets]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, preset="demo", out="runs/codec-comparison")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--bases", default="proxy,history")
    parser.add_argument(
        "--arms", default=None, help="comma-separated subset of the arms to run (default: all)"
    )
    parser.add_argument(
        "--arm",
        dest="more_arms",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="an extra arm: its name and its --set overrides (repeatable)",
    )
    args = parser.parse_args()
    info = machine()
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = arms(args.preset, [b for b in args.bases.split(",") if b])
    for text in args.more_arms:
        name, _, sets = text.partition(":")
        if not name or not sets:
            parser.error(f"--arm takes NAME:KEY=VALUE,..., got {text!r}")
        grid[name] = sets.split(",")
    if args.arms:
        wanted = args.arms.split(",")
        unknown = sorted(set(wanted) - set(grid))
        if unknown:
            parser.error(f"unknown arms {unknown}; arms: {', '.join(grid)}")
        grid = {k: v for k, v in grid.items() if k in wanted}
    out = ROOT / args.out / args.preset
    jobs = [(out / f"{name}_seed{s}", s, name) for name in grid for s in seeds]
    if args.finished_only:
        jobs = [j for j in jobs if (j[0] / "summary.json").exists()]

    def one(job):
        path, seed, name = job
        row = run(path, args.preset, seed, args.epsilon, [*grid[name], *args.extra])
        summary = json.loads((path / "summary.json").read_text())
        comm = summary["communication"]
        return {
            **row,
            "arm": name,
            "method": summary["method"],
            "codec": comm["codec"],
            "bytes_per_upload": comm["bytes_per_upload"],
            "full_bytes": comm["full_bytes"],
        }

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, jobs))
    table = []
    for name in grid:
        mine = [r for r in rows if r["arm"] == name]
        if not mine:
            continue
        entry = {
            "arm": name,
            "codec": mine[0]["codec"],
            "bytes_per_upload": mine[0]["bytes_per_upload"],
            "share_of_full_bytes": sig(mine[0]["bytes_per_upload"] / mine[0]["full_bytes"], 4),
            **accuracy_summary(mine),
            "pld_epsilon_max": sig(max(r["epsilon"]["pld"] for r in mine), 4),
            "noise_multiplier": sig(mine[0]["noise_multiplier"], 4),
        }
        table.append(entry)
        print(json.dumps(entry))
    write(
        f"codec_comparison_{args.preset}",
        {
            "benchmark": "codec_comparison",
            **info,
            "preset": args.preset,
            "target_epsilon": args.epsilon,
            "extra_settings": args.extra,
            "table": table,
            "runs": rows,
        },
    )


if __name__ == "__main__":
    main()
