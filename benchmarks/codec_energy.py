"""How much of a real update's energy does each codec keep at k = d/64, round after round?

Question (docs/codecs.md, "Structured codecs"): on real LoRA updates of a federated
trajectory, what share cos²(u, Dec(Enc(u))) of each update (and of each round's mean
update) do the random projection, the paper's random-prior auto-encoder and DR-Encoder's
structured subspace options keep, at the same latent size?

Runs ``drencoder codec-report --rounds N --json`` (or reads the JSON such a run printed,
``--from FILE``) and writes the per-round energies, the round-1 table and the settings to
``benchmarks/results/codec_energy_<name>.json``. Usage:

    .venv/bin/python benchmarks/codec_energy.py --name demo -- --preset demo \\
        --set method=dr-encoder --set codec.basis=history --rounds 40 --per-round 32
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
from pathlib import Path

import torch

from drencoder.cli.main import main as cli_main

RESULTS = Path(__file__).resolve().parent / "results"


def summarize(report: dict, command: list[str]) -> dict:
    rounds = report["rounds"] or []
    names = list(rounds[0]["codecs"]) if rounds else []
    return {
        "question": "share of real updates' energy each codec keeps at the same latent size",
        "command": "drencoder codec-report " + " ".join(command),
        "model": report["model"],
        "input_dim": report["input_dim"],
        "latent_dims": {row["name"]: row["latent_dim"] for row in report["codecs"]},
        "per_round_clients": report["per_round_clients"],
        "aggregate_noise": report["aggregate_noise"],
        "round1_all_clients": {
            row["name"]: {
                "energy": row["real"]["energy"]["energy"],
                "mean_energy": row["real"]["energy"]["mean_energy"],
                "rel_error": row["real"]["rel_error"],
                "encode_ms": row["encode_seconds"] * 1e3,
            }
            for row in report["codecs"]
        },
        "round1_updates": report["updates"],
        "rounds": [
            {
                "round": r["round"],
                "update_norm": r["update_norm"],
                "mean_norm": r["mean_norm"],
                "energy": {n: r["codecs"][n]["energy"] for n in names},
                "mean_energy": {n: r["codecs"][n]["mean_energy"] for n in names},
            }
            for r in rounds
        ],
        "seconds": report["seconds"],
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": report["torch_threads"],
        },
        "config": report["config"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="results/codec_energy_<name>.json")
    p.add_argument("--from", dest="source", help="a JSON report printed by codec-report --json")
    p.add_argument("command", nargs="*", help="codec-report arguments (after --)")
    args = p.parse_args()
    if args.source:
        report = json.loads(Path(args.source).read_text())
    else:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli_main(["codec-report", *args.command, "--json", "--no-progress"])
        report = json.loads(out.getvalue())
    result = summarize(report, args.command)
    path = RESULTS / f"codec_energy_{args.name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("command", "round1_all_clients")}, indent=1))


if __name__ == "__main__":
    main()
