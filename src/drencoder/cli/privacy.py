"""``drencoder privacy``: ε of T rounds of the client-level Gaussian mechanism, or the σ
that reaches a target ε, under GDP, RDP and PLD."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from drencoder import accounting
from drencoder.accounting.gdp import GdpApproximationWarning

DESCRIPTION = """\
Client-level privacy of T federated rounds, each a Gaussian mechanism with noise
multiplier sigma on updates clipped to norm C, with clients sampled by Poisson sampling at
rate q (q = 1: full participation). Prints epsilon at delta under three accountants:
gdp (exact for q = 1, central-limit approximation otherwise), rdp and pld (tightest).
With --target-epsilon instead of --noise-multiplier, prints the smallest sigma per
accountant whose epsilon does not exceed the target.
"""


def _number(name: str, *, lo: float, hi: float, lo_open: bool, hi_open: bool, integer=False):
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    rng = f"{left}{lo:g}, {'inf' if math.isinf(hi) else format(hi, 'g')}{right}"
    kind = "an integer" if integer else "a number"

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind} in {rng}, got {text!r}") from None
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not ok or (not integer and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {kind} in {rng}, got {text}")
        return value

    return parse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "privacy",
        help="epsilon under gdp/rdp/pld, or sigma for a target epsilon",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--noise-multiplier",
        metavar="S",
        type=_number("--noise-multiplier", lo=0, hi=math.inf, lo_open=True, hi_open=True),
        help="noise std divided by the clip norm (sigma > 0)",
    )
    which.add_argument(
        "--target-epsilon",
        metavar="E",
        type=_number("--target-epsilon", lo=0, hi=math.inf, lo_open=True, hi_open=True),
        help="calibrate: print the smallest sigma whose epsilon <= E",
    )
    p.add_argument(
        "--sample-rate",
        metavar="Q",
        required=True,
        type=_number("--sample-rate", lo=0, hi=1, lo_open=True, hi_open=False),
        help="Poisson client sampling rate in (0, 1]; 1 = full participation",
    )
    p.add_argument(
        "--rounds",
        metavar="T",
        required=True,
        type=_number("--rounds", lo=1, hi=math.inf, lo_open=False, hi_open=True, integer=True),
        help="number of rounds (integer >= 1)",
    )
    p.add_argument(
        "--delta",
        metavar="D",
        required=True,
        type=_number("--delta", lo=0, hi=1, lo_open=True, hi_open=True),
        help="target delta in (0, 1), e.g. 1e-5",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def compute(args: argparse.Namespace) -> dict:
    """The numbers ``drencoder privacy`` prints, as a JSON-ready dict."""
    q, T, delta = args.sample_rate, args.rounds, args.delta
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GdpApproximationWarning)
        out: dict = {"sample_rate": q, "rounds": T, "delta": delta}
        if args.target_epsilon is None:
            sigma = args.noise_multiplier
            event = accounting.rounds_event(noise_multiplier=sigma, sample_rate=q, rounds=T)
            out["noise_multiplier"] = sigma
            out["epsilon"] = accounting.epsilons(event, delta=delta)
            out["mu"] = accounting.gdp_mu(event)[0]
        else:
            out["target_epsilon"] = args.target_epsilon
            out["noise_multiplier"] = {
                a.value: accounting.calibrate_noise_multiplier(
                    target_epsilon=args.target_epsilon,
                    delta=delta,
                    sample_rate=q,
                    rounds=T,
                    accountant=a,
                )
                for a in accounting.ALL_ACCOUNTANTS
            }
    out["gdp_approximation"] = "exact" if q == 1 else "clt"
    out["warnings"] = sorted({str(w.message) for w in caught})
    return out


def _table(result: dict) -> str:
    q, T, delta = result["sample_rate"], result["rounds"], result["delta"]
    sampling = "full participation" if q == 1 else f"Poisson, q = {q:g}"
    notes = {
        "gdp": "exact" if q == 1 else "CLT approximation; may understate",
        "rdp": "dp-accounting RdpAccountant",
        "pld": "dp-accounting PLDAccountant; tightest",
    }
    lines = [f"client-level DP of {T} round(s), {sampling}, delta = {delta:g}"]
    if "epsilon" in result:
        lines.append(f"noise multiplier sigma = {result['noise_multiplier']:g}")
        lines.append("")
        lines.append(f"  {'accountant':<10}  {'epsilon':>10}  note")
        for name, eps in result["epsilon"].items():
            lines.append(f"  {name:<10}  {eps:>10.4f}  {notes[name]}")
        lines.append("")
        lines.append(f"  GDP mu = {result['mu']:.4f}")
    else:
        lines.append(f"target epsilon = {result['target_epsilon']:g}")
        lines.append("")
        lines.append(f"  {'accountant':<10}  {'sigma':>10}  note")
        for name, sigma in result["noise_multiplier"].items():
            lines.append(f"  {name:<10}  {sigma:>10.4f}  {notes[name]}")
        lines.append("")
        lines.append("  each sigma is the smallest whose epsilon does not exceed the target")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = compute(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(_table(result))
    for message in result["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    return 0
