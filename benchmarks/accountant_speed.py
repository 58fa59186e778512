"""What does drencoder's accounting API cost over calling dp-accounting directly?

For T = 10,000 rounds of the client-level Gaussian mechanism (δ = 1e-5) at Poisson rate
q = 0.01 with σ = 1, and at q = 1 (full participation) with σ = 100 (GDP μ = √T/σ = 1; at
σ = 1 and q = 1 the PLD grid spans an ε in the hundreds and one call takes minutes), time ε
under gdp, rdp and pld through ``accounting.epsilon`` and through a ``PrivacyLedger``
holding one ``SelfComposedDpEvent``, against dp-accounting itself (``RdpAccountant`` /
``PLDAccountant``: compose + get_epsilon) with the same orders and discretisation drencoder
uses. Repetitions alternate ours / direct; times are medians; a call under 0.2 s is
repeated until 0.2 s have passed and timed per call. GDP has no library counterpart
(drencoder implements it); it is timed alone.

Then the ledger as a run fills it with local noise: ``--clients`` clients, ``--rounds``
rounds, each round charging an un-amplified Gaussian round (σ = ``--ledger-sigma``) to the
clients Poisson-sampled at rate ``--ledger-rate`` (one entry per round). Timed: the record
calls, then ε of a fresh ledger holding those entries (grouping per client, then one
accountant call for the worst client), against the direct call for that worst client's
event. Usage (a few minutes on 2 shared cores):

    python benchmarks/accountant_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from common import machine, sig, write
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent, SelfComposedDpEvent
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from drencoder import accounting
from drencoder.accounting.accountants import PLD_DISCRETIZATION, RDP_ORDERS

DELTA = 1e-5


def direct_epsilon(event, accountant: str) -> float:
    if accountant == "rdp":
        acc = RdpAccountant(orders=RDP_ORDERS)
    else:
        acc = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    acc.compose(event)
    return acc.get_epsilon(DELTA)


def timed(fn, *, at_least: float = 0.2):
    """``(fn(), seconds per call)``; fast calls are repeated for ``at_least`` seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        value = fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= at_least:
            return value, elapsed / calls


def compare(event, accountant: str, repeat: int) -> dict:
    """Ours (epsilon() and a one-entry ledger) vs direct, alternating; median seconds."""
    times: dict[str, list[float]] = {"epsilon": [], "ledger": [], "direct": []}
    values: dict[str, float] = {}

    def ledger_epsilon() -> float:
        ledger = accounting.PrivacyLedger(delta=DELTA)
        ledger.record(event, kind="round")
        return ledger.epsilon(accountant)

    calls = {
        "epsilon": lambda: accounting.epsilon(event, delta=DELTA, accountant=accountant),
        "ledger": ledger_epsilon,
        "direct": lambda: direct_epsilon(event, accountant),
    }
    for rep in range(repeat):
        order = list(calls) if rep % 2 == 0 else list(calls)[::-1]
        for name in order:
            values[name], seconds = timed(calls[name])
            times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "epsilon": values["epsilon"],
        "epsilon_direct": values["direct"],
        "rel_diff": abs(values["epsilon"] - values["direct"]) / values["direct"],
        "ledger_equals_epsilon": values["ledger"] == values["epsilon"],
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "ratio_epsilon_vs_direct": sig(med["epsilon"] / med["direct"]),
        "ratio_ledger_vs_direct": sig(med["ledger"] / med["direct"]),
    }


def gdp_only(event, repeat: int) -> dict:
    times, value = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", accounting.GdpApproximationWarning)
        for _ in range(repeat):
            value, seconds = timed(lambda: accounting.epsilon(event, delta=DELTA, accountant="gdp"))
            times.append(seconds)
    return {"epsilon": value, "seconds": {"epsilon": round(statistics.median(times), 6)}}


def ledger_vs_direct(
    rounds_of: list[list[int]], worst: int, sigma: float, accountant: str, repeat: int
) -> dict:
    """Fill a fresh ledger (timed), then its ε and the direct call, alternating."""
    charge = GaussianDpEvent(sigma)  # local noise: no amplification against the server
    times: dict[str, list[float]] = {"record": [], "epsilon": [], "direct": []}
    values: dict[str, float] = {}
    for rep in range(repeat):
        ledger = accounting.PrivacyLedger(delta=DELTA)
        start = time.perf_counter()
        for t, who in enumerate(rounds_of, start=1):
            if who:
                ledger.record(charge, kind="round", round=t, clients=who)
        times["record"].append(time.perf_counter() - start)
        calls = {  # a fresh ledger per call: a ledger caches its ε
            "epsilon": lambda entries=ledger.entries: accounting.PrivacyLedger(
                delta=DELTA, entries=entries
            ).epsilon(accountant),
            "direct": lambda: direct_epsilon(SelfComposedDpEvent(charge, worst), accountant),
        }
        for name in list(calls) if rep % 2 == 0 else list(calls)[::-1]:
            values[name], seconds = timed(calls[name])
            times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "epsilon": values["epsilon"],
        "epsilon_direct": values["direct"],
        "rel_diff": abs(values["epsilon"] - values["direct"]) / values["direct"],
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "ratio_epsilon_vs_direct": sig(med["epsilon"] / med["direct"]),
        "ratio_record_plus_epsilon_vs_direct": sig(
            (med["record"] + med["epsilon"]) / med["direct"]
        ),
    }


def per_client_ledger(clients: int, rounds: int, rate: float, sigma: float, repeat: int):
    """A run's ledger under local noise vs one direct call for its worst client."""
    rng = np.random.default_rng(0)
    rounds_of = [np.flatnonzero(rng.random(clients) < rate).tolist() for _ in range(rounds)]
    worst = int(max(np.bincount(np.concatenate(rounds_of).astype(int), minlength=clients)))
    return {
        "clients": clients,
        "rounds": rounds,
        "rate": rate,
        "noise_multiplier": sigma,
        "entries": sum(1 for who in rounds_of if who),
        "worst_client_rounds": worst,
        **{a: ledger_vs_direct(rounds_of, worst, sigma, a, repeat) for a in ("rdp", "pld")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--ledger-rate", type=float, default=0.05)
    parser.add_argument("--ledger-sigma", type=float, default=25.0)
    args = parser.parse_args()
    info = machine()  # before the work: it records the load at the start
    result: dict = {
        "benchmark": "accountant_speed",
        **info,
        "delta": DELTA,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "rdp_orders": len(RDP_ORDERS),
        "pld_discretization": PLD_DISCRETIZATION,
        "single_event": {},
    }
    for q, sigma in ((0.01, 1.0), (1.0, 100.0)):
        gaussian = GaussianDpEvent(sigma)
        event = SelfComposedDpEvent(
            PoissonSampledDpEvent(q, gaussian) if q < 1 else gaussian, args.rounds
        )
        result["single_event"][f"q={q:g}, sigma={sigma:g}"] = {
            "gdp": gdp_only(event, args.repeat),
            **{a: compare(event, a, args.repeat) for a in ("rdp", "pld")},
        }
    result["per_client_ledger"] = per_client_ledger(
        args.clients, args.rounds, args.ledger_rate, args.ledger_sigma, args.repeat
    )
    write("accountant_speed", result)


if __name__ == "__main__":
    main()
