"""``drencoder audit``: the privacy a run actually gives, measured with canary clients."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from drencoder.cli import argtypes
from drencoder.cli.options import add_config_arguments
from drencoder.config import Method

DESCRIPTION = """\
Run the federation with canary clients and report, for each method, an empirical lower
bound on epsilon at a stated confidence beside the epsilon the accountant charged the
canaries (one-run auditing: Steinke, Nasr, Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023). Each canary client flips a fair coin nobody sees, then sends
+C*u or -C*u (or, where epsilon is stated under add-remove, +C*u or nothing) for a fixed
random unit vector u of the sent space, through the same clip, noise and aggregation as
real clients; the audited party guesses the coins from what it sees. The party follows
the noise placement: local audits the server (every client's noised message), central
audits whoever sees the released aggregates. --seed-known lets the party replay the noise
stream from the run's seed: with privacy.reproducible_noise (--reproducible-noise) that
breaks the guarantee, and the audit shows it. A lower bound far below the accountant's
epsilon does not show that a run is more private than accounted: the attack may be weak.
Each run goes under OUT/<method>-<placement>/; OUT/audit.json holds every entry.
"""

ALL_METHODS = tuple(m.value for m in Method)


def register(subparsers) -> None:
    from drencoder.audit import DEFAULT_CANARIES, DEFAULT_CONFIDENCE

    p = subparsers.add_parser(
        "audit",
        help="measure the privacy a run gives: empirical epsilon lower bound vs accountant",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--out", metavar="DIR", required=True, help="new audit directory")
    p.add_argument(
        "--methods",
        type=argtypes.names,
        default=ALL_METHODS,
        help="comma-separated methods (default: all five)",
    )
    p.add_argument(
        "--placements",
        type=argtypes.names,
        default=None,
        help="comma-separated noise placements to audit, local and/or central (default: "
        "the config's privacy.placement)",
    )
    p.add_argument(
        "--canaries",
        type=argtypes.number(lo=2, integer=True),
        default=DEFAULT_CANARIES,
        metavar="M",
        help="canary clients per run (default: %(default)s)",
    )
    p.add_argument(
        "--confidence",
        type=argtypes.number(lo=0, hi=1, lo_open=True),
        default=DEFAULT_CONFIDENCE,
        help="confidence of the lower bound (default: %(default)s)",
    )
    p.add_argument(
        "--seed-known",
        action="store_true",
        help="the audited party knows the run's seed and replays the noise stream from it",
    )
    p.add_argument(
        "--reproducible-noise",
        action="store_true",
        help="research only: audit runs whose DP noise is drawn from the run's seed "
        "(privacy.reproducible_noise = true); with --seed-known this is the known bug",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def _configs(args: argparse.Namespace):
    from drencoder.config import load_config
    from drencoder.errors import ConfigError

    base = list(args.overrides)
    if args.reproducible_noise:
        base.append("privacy.reproducible_noise=true")
    unknown = [m for m in args.methods if m not in ALL_METHODS]
    if unknown or not args.methods:
        raise ConfigError(
            f"--methods takes names from {', '.join(ALL_METHODS)}, got {','.join(args.methods)!r}"
        )
    for method in args.methods:
        config = load_config(args.config, overrides=[*base, f"method={method}"], preset=args.preset)
        placements = args.placements or (config.privacy.placement.value,)
        for placement in placements:
            if placement not in ("local", "central"):
                raise ConfigError(f"--placements takes local and/or central, got {placement!r}")
            yield load_config(
                args.config,
                overrides=[*base, f"method={method}", f"privacy.placement={placement}"],
                preset=args.preset,
            )


def _table(entries: list[dict]) -> str:
    head = (
        f"{'method':<22}{'placement':<10}{'party':<28}{'eps theory':>11}{'eps lower':>11}"
        f"{'ratio':>7}{'right':>10}"
    )
    lines = [head]
    for e in entries:
        theory = "inf (no DP)" if e["epsilon_theory"] is None else f"{e['epsilon_theory']:.3f}"
        ratio = "-" if e["ratio"] is None else f"{e['ratio']:.2f}"
        lines.append(
            f"{e['method']:<22}{e['placement']:<10}{e['party']:<28}{theory:>11}"
            f"{e['epsilon_lower_bound']:>11.3f}{ratio:>7}{e['correct']:>6}/{e['guesses']}"
        )
    e = entries[0]
    lines.append(
        f"lower bounds at {e['confidence']:g} confidence with {e['canaries']} canaries, "
        f"delta {e['delta']:g}; eps theory: the accountant's charge to the worst canary"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from drencoder.audit import run_audit
    from drencoder.errors import ConfigError

    out = Path(args.out)
    if (out / "audit.json").exists():
        raise ConfigError(f"{out} already holds an audit (audit.json); choose another --out")
    configs = list(_configs(args))  # every config checked before anything runs
    started = time.perf_counter()
    entries = []
    for config in configs:
        name = f"{config.method.value}-{config.privacy.placement.value}"
        if not args.json:
            print(f"auditing {name} ...", file=sys.stderr)
        entry = run_audit(
            config,
            out / name,
            canaries=args.canaries,
            confidence=args.confidence,
            seed_known=args.seed_known,
            progress=not args.no_progress,
        )
        entries.append(entry.to_json())
    result = {"audits": entries, "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(_table(entries))
        print(f"audit: {out / 'audit.json'}")
    for e in entries:
        if e["epsilon_theory"] is not None and e["epsilon_lower_bound"] > e["epsilon_theory"]:
            print(
                f"warning: {e['method']} ({e['placement']}, party {e['party']}): the measured "
                f"lower bound {e['epsilon_lower_bound']:.3f} exceeds the accountant's epsilon "
                f"{e['epsilon_theory']:.3f}: the run does not deliver its guarantee against "
                "this party (or this is the 1 - confidence chance of a false alarm)",
                file=sys.stderr,
            )
    if any(e["reproducible_noise"] for e in entries):
        print(
            "warning: reproducible noise: epsilon does not hold against anyone who knows the seed",
            file=sys.stderr,
        )
    return 0
