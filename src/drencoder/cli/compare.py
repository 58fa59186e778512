"""``drencoder compare``: the five methods at the same ε, data, rounds and seeds."""

from __future__ import annotations

import argparse
import json

from drencoder.cli import argtypes
from drencoder.cli.options import add_config_arguments
from drencoder.errors import ConfigError

DESCRIPTION = """\
Run the methods of docs/design.md §5 (fedavg-lora, dp-fedavg-lora, ffa-lora-dp,
dp-random-projection, dr-encoder) on the same data, rounds and seeds, each private method
with sigma calibrated to each target epsilon, then write a table, plots and verdicts into
OUT/report.md. Every run is an ordinary `drencoder run` directory under OUT/runs/; calling
the same command again continues an interrupted comparison and recomputes nothing.
--config/--set/--preset apply to every run; --method-set applies to one method only.
--variants adds arms: dr-encoder with a structured codec (dr-encoder+history, +proxy,
+sketch, +energy, +random) and the strawman dp-fedavg-lora+lr-scaled (the full update with
the server learning rate scaled by codec.compression_ratio = k/d); see docs/codecs.md.
"""


def register(subparsers) -> None:
    from drencoder.compare.plan import DEFAULT_EPSILONS, DEFAULT_SEEDS, DEFAULT_TASKS

    p = subparsers.add_parser(
        "compare",
        help="compare the five methods at matched privacy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--out", metavar="DIR", required=True, help="comparison directory")
    p.add_argument(
        "--methods",
        type=argtypes.names,
        default=None,
        help="comma-separated methods (default: all five)",
    )
    p.add_argument(
        "--epsilons",
        type=argtypes.number_list(lo=0, lo_open=True),
        default=DEFAULT_EPSILONS,
        help="target epsilons (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=argtypes.number_list(lo=0, integer=True),
        default=DEFAULT_SEEDS,
        help="seeds (default: %(default)s)",
    )
    p.add_argument(
        "--tasks",
        type=argtypes.names,
        default=DEFAULT_TASKS,
        help="extra tasks scored on each final adapter besides the training task: mmlu, "
        "ceval, sentiment, or none (default: %(default)s)",
    )
    p.add_argument(
        "--eval-limit",
        type=argtypes.number(lo=1, integer=True),
        default=200,
        metavar="N",
        help="questions per extra task (default: %(default)s)",
    )
    p.add_argument(
        "--shots",
        type=argtypes.number(lo=0, integer=True),
        default=None,
        help="few-shot exemplars for extra tasks",
    )
    p.add_argument("--ceval-dir", metavar="DIR", help="C-Eval directory (for --tasks ceval)")
    p.add_argument(
        "--method-set",
        metavar="METHOD:KEY=VALUE",
        action="append",
        default=[],
        help="override one key for one method (repeatable), e.g. dr-encoder:privacy.clip_norm=0.5",
    )
    p.add_argument(
        "--variants",
        type=argtypes.names,
        default=(),
        help="extra arms METHOD+OPTION, comma-separated: dr-encoder+BASIS (a codec.basis) "
        "and dp-fedavg-lora+lr-scaled",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (out, report and the comparison's summary) instead of "
        "the text lines",
    )
    p.add_argument(
        "--jobs",
        type=argtypes.number(lo=1, integer=True),
        default=1,
        metavar="N",
        help="runs at a time, each in its own process with cores/N torch threads "
        "(default: %(default)s); on a CPU, one per core is fastest",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def _method_overrides(items: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for item in items:
        method, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ConfigError(f"--method-set needs METHOD:KEY=VALUE, got {item!r}")
        out.setdefault(method.strip(), []).append(override.strip())
    return {k: tuple(v) for k, v in out.items()}


def run(args: argparse.Namespace) -> int:
    from drencoder.compare import CompareSpec, run_comparison
    from drencoder.compare.plan import ALL_METHODS

    spec = CompareSpec(
        methods=args.methods or ALL_METHODS,
        epsilons=args.epsilons,
        seeds=args.seeds,
        tasks=args.tasks,
        eval_limit=args.eval_limit,
        shots=args.shots,
        ceval_dir=args.ceval_dir,
        config_path=args.config,
        preset=args.preset,
        overrides=tuple(args.overrides),
        method_overrides=_method_overrides(args.method_set),
        variants=args.variants,
    )
    result = run_comparison(spec, args.out, progress=not args.no_progress, jobs=args.jobs)
    if args.json:
        record = {"out": str(args.out), "report": f"{args.out}/report.md", **result}
        print(json.dumps(record, indent=1))
        return 0
    print(f"comparison: {args.out}/report.md ({len(result['records'])} runs)")
    for v in result["verdicts"]:
        if v["delta"] is not None and "accuracy" in v["metric"]:
            print(
                f"  eps {v['epsilon']:g}: dr-encoder vs {v['baseline']} on {v['metric']}: "
                f"{v['delta']:+.3f} ({v['verdict']})"
            )
    return 0
