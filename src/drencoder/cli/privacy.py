"""``drencoder privacy``: ε of T rounds of the client-level Gaussian mechanism, or the σ
that reaches a target ε, under GDP, RDP and PLD, as a run with the same placement,
sampling and relation charges its worst client."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

import dp_accounting

from drencoder import accounting
from drencoder.accounting.calibration import needs_clt
from drencoder.accounting.gdp import GdpApproximationWarning
from drencoder.cli import argtypes

DESCRIPTION = """\
Client-level privacy of T federated rounds, each a Gaussian mechanism with noise
multiplier sigma on updates clipped to norm C, with clients sampled at rate q (q = 1: full
participation). Prints what a run with the same settings charges its worst client:

- placement local (the default of a run): each client noises its own update, so the server
  sees who took part; a client may take part in every round, so T un-amplified rounds are
  charged whatever q.
- placement central with Poisson sampling: a trusted aggregator noises the sum and hides
  who took part; each round is Poisson-subsampled at rate q (amplification).
- placement central with fixed-size sampling: no amplification is claimed.

Epsilon is stated under a neighbouring relation. add-remove (sensitivity C) holds only for
central noise with Poisson sampling; wherever the aggregating party sees who took part the
relation that protects a participant is replace-one (its clipped update can move by 2C).
--relation auto (the default) picks the one that holds; forcing add-remove where it does
not hold prints a warning.

Accountants: gdp (exact without subsampling, central-limit approximation otherwise), rdp
and pld (tightest). With --target-epsilon instead of --noise-multiplier, prints the
smallest sigma per accountant whose epsilon does not exceed the target; gdp is not
calibrated where it needs the central-limit approximation, which can understate epsilon.
"""


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
        type=argtypes.number(lo=0, lo_open=True),
        help="noise std divided by the clip norm (sigma > 0)",
    )
    which.add_argument(
        "--target-epsilon",
        metavar="E",
        type=argtypes.number(lo=0, lo_open=True),
        help="calibrate: print the smallest sigma whose epsilon <= E",
    )
    p.add_argument(
        "--sample-rate",
        metavar="Q",
        required=True,
        type=argtypes.number(lo=0, hi=1, lo_open=True, hi_open=False),
        help="Poisson client sampling rate in (0, 1]; 1 = full participation",
    )
    p.add_argument(
        "--rounds",
        metavar="T",
        required=True,
        type=argtypes.number(lo=1, hi=math.inf, integer=True),
        help="number of rounds (integer >= 1)",
    )
    p.add_argument(
        "--delta",
        metavar="D",
        required=True,
        type=argtypes.number(lo=0, hi=1, lo_open=True, hi_open=True),
        help="target delta in (0, 1), e.g. 1e-5",
    )
    p.add_argument(
        "--placement",
        choices=("local", "central"),
        default="local",
        help="who adds the noise: each client (local, the default of a run) or a trusted "
        "aggregator to the sum (central)",
    )
    p.add_argument(
        "--sampling",
        choices=("poisson", "fixed"),
        default="poisson",
        help="client sampling: Poisson at rate q (default) or a fixed-size cohort",
    )
    p.add_argument(
        "--relation",
        choices=accounting.RELATION_CHOICES,
        default="auto",
        help="neighbouring relation of epsilon; auto (default) picks the one that holds",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _notes(*, clt: bool, relation: accounting.Relation) -> dict[str, str]:
    """The note beside each accountant's row (and in the JSON ``notes``)."""
    rdp = "dp-accounting RdpAccountant"
    if relation is accounting.Relation.REPLACE_ONE:
        rdp += " (as Gaussian(sigma/2), add-remove)"
    return {
        "gdp": "CLT approximation; may understate" if clt else "exact",
        "rdp": rdp,
        "pld": "dp-accounting PLDAccountant; tightest",
    }


NOT_CALIBRATED_CLT = "not calibrated: CLT approximation can understate epsilon"
UNSUPPORTED_RDP = "n/a: dp-accounting's RDP has no Poisson subsampling under replace-one; see pld"


def compute(args: argparse.Namespace) -> dict:
    """The numbers ``drencoder privacy`` prints, as a JSON-ready dict."""
    q, T, delta = args.sample_rate, args.rounds, args.delta
    placement, sampling = args.placement, args.sampling
    relation = accounting.resolve_relation(args.relation, placement=placement, sampling=sampling)

    def make_event(sigma: float):
        event = accounting.round_event(
            noise_multiplier=sigma, placement=placement, sampling=sampling, sample_rate=q
        )
        return accounting.repeated(event, T)

    one_round = accounting.round_event(
        noise_multiplier=1.0, placement=placement, sampling=sampling, sample_rate=q
    )
    amplified = isinstance(one_round, dp_accounting.PoissonSampledDpEvent)
    clt = needs_clt(make_event(1.0))
    notes = _notes(clt=clt, relation=relation)
    out: dict = {
        "sample_rate": q,
        "rounds": T,
        "delta": delta,
        "placement": placement,
        "sampling": sampling,
        "relation": relation.value,
        "relation_choice": args.relation,
        "charged_to": accounting.charged_to(placement),
        "amplified": amplified,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GdpApproximationWarning)
        if args.target_epsilon is None:
            event = make_event(args.noise_multiplier)
            out["noise_multiplier"] = args.noise_multiplier
            out["epsilon"] = accounting.epsilons(event, delta=delta, relation=relation)
            if out["epsilon"].get("rdp", 0.0) is None:
                notes["rdp"] = UNSUPPORTED_RDP
            out["mu"] = accounting.gdp_mu(event, relation=relation)[0]
        else:
            out["target_epsilon"] = args.target_epsilon
            sigmas: dict[str, float | None] = {}
            for a in accounting.ALL_ACCOUNTANTS:
                if a is accounting.Accountant.GDP and clt:
                    sigmas[a.value] = None  # approximations never decide a budget
                    notes[a.value] = NOT_CALIBRATED_CLT
                    continue
                try:
                    sigmas[a.value] = accounting.calibrate(
                        make_event,
                        target_epsilon=args.target_epsilon,
                        delta=delta,
                        accountant=a,
                        relation=relation,
                    )
                except accounting.UnsupportedRelation:
                    sigmas[a.value] = None
                    notes[a.value] = UNSUPPORTED_RDP
            out["noise_multiplier"] = sigmas
    out["notes"] = notes
    out["gdp_approximation"] = "clt" if clt else "exact"
    if q < 1 and not amplified:
        out["sampling_note"] = (
            f"q = {q:g} does not amplify against the party that sees who took part "
            f"({placement} noise, {sampling} sampling): the worst client is charged all {T} "
            "rounds un-amplified"
        )
    found = {str(w.message) for w in caught}
    warning = accounting.relation_warning(relation, placement=placement, sampling=sampling)
    out["warnings"] = ([warning] if warning else []) + sorted(found)
    return out


def _table(result: dict) -> str:
    q, T, delta, relation = (result[k] for k in ("sample_rate", "rounds", "delta", "relation"))
    participation = "full participation" if q == 1 else f"{result['sampling']} sampling, q = {q:g}"
    charged = (
        "each round is charged to its participants; the worst client takes part in every round"
        if result["charged_to"] == "participants"
        else "each round is charged to every client"
    )
    lines = [
        f"client-level DP of {T} round(s), {result['placement']} noise, {participation}, "
        f"delta = {delta:g}",
        f"relation: {relation} ({result['relation_choice']}); {charged}",
    ]
    if "sampling_note" in result:
        lines.append(f"note: {result['sampling_note']}")
    notes = result["notes"]
    if "epsilon" in result:
        lines.append(f"noise multiplier sigma = {result['noise_multiplier']:g}")
        lines.append("")
        lines.append(f"  {'accountant':<10}  {'epsilon':>10}  note (relation {relation})")
        for name, eps in result["epsilon"].items():
            shown = "n/a" if eps is None else f"{eps:.4f}"
            lines.append(f"  {name:<10}  {shown:>10}  {notes[name]}")
        lines.append("")
        lines.append(f"  GDP mu = {result['mu']:.4f} (relation {relation})")
    else:
        lines.append(f"target epsilon = {result['target_epsilon']:g} (relation {relation})")
        lines.append("")
        lines.append(f"  {'accountant':<10}  {'sigma':>10}  note")
        for name, sigma in result["noise_multiplier"].items():
            shown = "-" if sigma is None else f"{sigma:.4f}"
            lines.append(f"  {name:<10}  {shown:>10}  {notes[name]}")
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
