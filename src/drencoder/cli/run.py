"""``drencoder run``: a federated fine-tuning job into a run directory, or its resume."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from drencoder.cli.options import add_config_arguments, config_from_arguments

DESCRIPTION = """\
Run federated LoRA fine-tuning with one of the five methods (fedavg-lora, dp-fedavg-lora,
ffa-lora-dp, dp-random-projection, dr-encoder). With no config it runs the embedded
default: SmolLM2-135M-Instruct, Chinese review sentiment, 4 clients, dr-encoder at
epsilon = 8, delta = 1e-5. Keys are dotted paths usable in TOML and in --set, e.g.
--set rounds=10 --set privacy.placement=central. The run directory gets config.toml,
metrics.jsonl, adapter/ (PEFT), checkpoints/, plots and report.md.
"""


def config_keys_epilog() -> str:
    """Every config key with its default and help text (as in docs/running.md)."""
    from drencoder.config import describe_keys

    lines = ["configuration keys (--set KEY=VALUE or TOML; default after '='):"]
    for key, default, text in describe_keys():
        lines.append(f"  {key} = {default}")
        lines.extend(
            textwrap.wrap(text, width=88, initial_indent="      ", subsequent_indent="      ")
        )
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run (or resume) a federated fine-tuning job",
        description=DESCRIPTION,
        epilog=config_keys_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR", help="new run directory")
    where.add_argument("--resume", metavar="DIR", help="continue a run from its last checkpoint")
    p.add_argument(
        "--reproducible-noise",
        action="store_true",
        help="research only: draw the DP noise from generators seeded by the run's seed "
        "(privacy.reproducible_noise = true), so the run repeats exactly; epsilon then does "
        "not hold against anyone who knows the seed (default: OS entropy)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (run_dir, report, summary: summary.json) instead of the "
        "text lines",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drencoder.federated.server.rundir import prepare_run_dir
    from drencoder.federated.simulator import Simulator

    progress = not args.no_progress
    if args.resume:
        if args.config or args.overrides or args.preset != "default" or args.reproducible_noise:
            print(
                "drencoder run: error: --resume continues with the run's own config.toml; "
                "drop --config/--set/--preset/--reproducible-noise",
                file=sys.stderr,
            )
            return 2
        prepare_run_dir(args.resume, fresh=False)
        sim = Simulator.resume(args.resume, progress=progress)
    else:
        if args.reproducible_noise:
            args.overrides = [*args.overrides, "privacy.reproducible_noise=true"]
        config = config_from_arguments(args)
        prepare_run_dir(args.out, fresh=True)  # before the model loads
        sim = Simulator(config, args.out, progress=progress)
    if sim.config.privacy.reproducible_noise:
        from drencoder.federated.server.summary import REPRODUCIBLE_NOISE_WARNING

        print(f"warning: {REPRODUCIBLE_NOISE_WARNING}", file=sys.stderr)
    summary = sim.run()
    out = sim.run_dir
    if args.json:
        record = {"run_dir": str(out), "report": str(out / "report.md"), "summary": summary}
        print(json.dumps(record, indent=1))
        return 0
    print(f"run directory: {out}")
    print(f"report:        {out / 'report.md'}")
    print(f"rounds:        {summary['rounds_done']} of {summary['rounds_planned']}")
    if summary["stop_reason"]:
        print(f"stopped:       {summary['stop_reason']}")
    privacy = summary["privacy"]
    eps = privacy.get("epsilon")
    if eps:
        shown = ", ".join(f"{k} {'n/a' if v is None else format(v, '.4g')}" for k, v in eps.items())
        print(
            f"epsilon:       {shown} (delta {privacy['delta']:g}, worst client, "
            f"{privacy['relation']} relation)"
        )
        print(f"holds against: {privacy['holds_against']}")
        if privacy.get("reproducible_noise"):
            print(f"warning: {privacy['noise_seed']}", file=sys.stderr)
    else:
        print("epsilon:       none (no differential privacy: fedavg-lora adds no noise)")
    if summary.get("utility"):
        print(f"result:        {summary['utility']['statement']}")
    return 0
