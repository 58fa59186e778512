"""Does the privacy ledger's cost per round stay flat over a long run?

A run records one entry per round and then queries the ledger: ``would_exceed`` before
the round (when a target ε is set) and ``epsilon`` after it. This benchmark replays
``--rounds`` rounds over a population of ``--clients`` clients (δ = 1e-5) in two settings:

- ``central``: ``PoissonSampled(q, Gaussian(σ))`` charged to every client each round
  (add-remove, amplified);
- ``local``: ``Gaussian(σ)`` charged to the clients Poisson-sampled at rate q that round
  (numpy, fixed seed; about q·clients per entry), under replace-one.

The ledger's own work and dp-accounting's are measured apart, because only the first is
the ledger's to make flat:

1. ``bookkeeping``: every round is probed, recorded and queried under pld, with
   ``accountants.epsilon`` replaced by a constant-time stand-in that counts its calls;
   per-round seconds over the first and last ``--window`` rounds, their ratio, the total,
   and (a second, identical pass) the peak traced memory.
2. ``with_pld``: the real accountant. Every round is recorded; over the first and the last
   ``--window`` rounds each round is also probed and queried, as in a run. dp-accounting's
   PLD of ``repeated(event, n)`` grows with n, so ``pld_seconds_by_rounds`` times one
   evaluation of the worst client's composed event at several round counts, and
   ``estimated_full_run_seconds`` integrates it over the evaluations the run makes.
3. ``persistence``: ``save`` (JSON of every entry with its client list, written at every
   checkpoint) and ``load`` at a tenth of the run and at its end, and the size of the
   client lists under a few compact encodings; plus the time the regrouping every query
   did before the ledger composed incrementally (one walk over all entries and clients).

Usage (a few minutes on 2 shared cores):

    python benchmarks/ledger_scaling.py
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import statistics
import tempfile
import time
import tracemalloc
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from common import machine, sig, write
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent

from drencoder import accounting
from drencoder.accounting import accountants

DELTA = 1e-5
TARGET = 1e9  # the probe's answer does not matter here, only its cost


@contextlib.contextmanager
def stub_accountant(calls: list[int]):
    """``accountants.epsilon`` as a constant-time stand-in that counts its calls."""
    real = accountants.epsilon

    def fake(event, **kwargs):
        calls[0] += 1
        return 0.0

    accountants.epsilon = fake
    try:
        yield
    finally:
        accountants.epsilon = real


def setting(name: str, args) -> dict:
    if name == "central":
        event = PoissonSampledDpEvent(args.rate, GaussianDpEvent(args.central_sigma))
        return {"event": event, "relation": "add-remove", "sigma": args.central_sigma}
    return {
        "event": GaussianDpEvent(args.local_sigma),
        "relation": "replace-one",
        "sigma": args.local_sigma,
    }


def sampled(rng: np.random.Generator, name: str, clients: int, rate: float):
    """Who a round charges: everyone (None) or the Poisson-sampled clients."""
    draw = np.flatnonzero(rng.random(clients) < rate)  # drawn in both settings: same stream
    return None if name == "central" else draw.tolist()


def window_stats(seconds: list[float], window: int) -> dict:
    first, last = seconds[:window], seconds[-window:]
    return {
        "first_median_s": sig(statistics.median(first)),
        "last_median_s": sig(statistics.median(last)),
        "first_mean_s": sig(statistics.fmean(first)),
        "last_mean_s": sig(statistics.fmean(last)),
        "ratio_last_vs_first_median": sig(statistics.median(last) / statistics.median(first)),
        "ratio_last_vs_first_mean": sig(statistics.fmean(last) / statistics.fmean(first)),
    }


def bookkeeping(name: str, args, *, trace: bool) -> tuple[dict, accounting.PrivacyLedger, list]:
    """Probe, record and query every round with the stand-in accountant.

    ``total_s`` is the whole replay, sampling included; the per-round seconds time the
    ledger calls alone.
    """
    s = setting(name, args)
    rng = np.random.default_rng(args.seed)
    ledger = accounting.PrivacyLedger(delta=DELTA, relation=s["relation"])
    calls, seconds, evaluations, worst = [0], [], [], []
    key = _event_key(s["event"])  # the worst client's charges of it, round by round
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    with stub_accountant(calls):
        for t in range(args.rounds):
            who = sampled(rng, name, args.clients, args.rate)
            before, t0 = calls[0], time.perf_counter()
            ledger.would_exceed(s["event"], target_epsilon=TARGET, clients=who)
            ledger.record(s["event"], kind="round", round=t, clients=who)
            ledger.epsilon("pld")
            seconds.append(time.perf_counter() - t0)
            evaluations.append(calls[0] - before)
            worst.append(max(g[key] for g in ledger._groups()))
    total = time.perf_counter() - start
    out = {
        "total_s": round(total, 2),
        **window_stats(seconds, args.window),
        "accountant_calls": calls[0],
        "accountant_calls_last_window": sum(evaluations[-args.window :]),
    }
    if trace:  # a second pass: tracing slows every allocation, so it reports memory only
        out = {"peak_traced_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 1)}
        tracemalloc.stop()
    return out, ledger, {"evaluations": evaluations, "worst": worst}


def _event_key(event) -> str:
    return json.dumps(accounting.event_to_json(event), sort_keys=True)


def with_pld(name: str, args) -> dict:
    """The real accountant, queried every round of the first and last windows."""
    s = setting(name, args)
    rng = np.random.default_rng(args.seed)
    ledger = accounting.PrivacyLedger(delta=DELTA, relation=s["relation"])
    windows = {"first": range(args.window), "last": range(args.rounds - args.window, args.rounds)}
    seconds: dict[str, list[float]] = {"first": [], "last": []}
    record_s, eps = 0.0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", accounting.GdpApproximationWarning)
        for t in range(args.rounds):
            who = sampled(rng, name, args.clients, args.rate)
            which = next((k for k, r in windows.items() if t in r), None)
            t0 = time.perf_counter()
            if which:
                ledger.would_exceed(s["event"], target_epsilon=TARGET, clients=who)
            ledger.record(s["event"], kind="round", round=t, clients=who)
            if which:
                eps = ledger.epsilon("pld")
                seconds[which].append(time.perf_counter() - t0)
            else:
                record_s += time.perf_counter() - t0
    first, last = seconds["first"], seconds["last"]
    return {
        "epsilon_pld_final": eps,
        "first_median_s": sig(statistics.median(first)),
        "last_median_s": sig(statistics.median(last)),
        "ratio_last_vs_first_median": sig(statistics.median(last) / statistics.median(first)),
        "ratio_last_vs_first_mean": sig(statistics.fmean(last) / statistics.fmean(first)),
        "record_only_rounds_total_s": round(record_s, 2),
    }


def pld_by_rounds(name: str, args, trail: dict) -> dict:
    """Seconds of one PLD evaluation of the worst client's event after n rounds."""
    s = setting(name, args)
    points = sorted({n for n in (1, 10, 100, 1000, 2000, 5000, 10_000) if n <= args.rounds})
    seconds = {}
    for n in points:
        count = trail["worst"][n - 1]
        event = accounting.repeated(s["event"], count)
        t0 = time.perf_counter()
        accounting.epsilon(event, delta=DELTA, accountant="pld", relation=s["relation"])
        seconds[n] = time.perf_counter() - t0
    # Integrate: each round's new evaluations cost what one evaluation costs at that round
    # (linear interpolation between the measured points).
    xs, ys = list(seconds), list(seconds.values())
    per_round = np.interp(np.arange(1, args.rounds + 1), xs, ys)
    estimate = float(np.dot(per_round, trail["evaluations"]))
    return {
        "pld_seconds_by_rounds": {str(n): sig(v) for n, v in seconds.items()},
        "worst_client_charges_by_rounds": {str(n): trail["worst"][n - 1] for n in points},
        "evaluations_per_round_mean": sig(statistics.fmean(trail["evaluations"])),
        "estimated_full_run_seconds": round(estimate),
    }


def regroup_from_scratch(entries) -> int:
    """The walk every query made before: all entries, all clients, then distinct groups."""
    common: Counter = Counter()
    per_client: dict[int, Counter] = {}
    for e in entries:
        if e.clients is None:
            common[_event_key(e.event)] += 1
        else:
            for c in e.clients:
                per_client.setdefault(c, Counter())[_event_key(e.event)] += 1
    return len({frozenset((common + c).items()) for c in per_client.values()})


def varint_bytes(gaps: np.ndarray) -> int:
    return int(np.sum(1 + (gaps >= 128) + (gaps >= 2**14) + (gaps >= 2**21)))


def persistence(ledger: accounting.PrivacyLedger, args) -> dict:
    out = {}
    entries = ledger.entries
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.rounds // 10, args.rounds):
            part = (
                ledger
                if n == len(entries)
                else accounting.PrivacyLedger(
                    delta=ledger.delta, relation=ledger.relation, entries=entries[:n]
                )
            )
            path = Path(tmp) / "ledger.json"
            t0 = time.perf_counter()
            part.save(path)
            save_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = accounting.PrivacyLedger.load(path)
            load_s = time.perf_counter() - t0
            assert len(loaded) == n
            t0 = time.perf_counter()
            regroup_from_scratch(entries[:n])
            regroup_s = time.perf_counter() - t0
            out[f"at_{n}_rounds"] = {
                "save_s": round(save_s, 3),
                "load_s": round(load_s, 3),
                "json_mib": round(path.stat().st_size / 2**20, 2),
                "old_per_query_regroup_s": round(regroup_s, 3),
            }
    lists = [np.asarray(e.clients, dtype=np.int64) for e in entries if e.clients is not None]
    if lists:
        ids = sum(len(x) for x in lists)
        out["client_ids_listed"] = ids
        out["compact_client_lists_mib"] = {
            "json_no_indent": round(sum(len(json.dumps(x.tolist())) for x in lists) / 2**20, 2),
            "bitmap_base64": round(
                sum(
                    len(base64.b64encode(np.packbits(np.bincount(x, minlength=args.clients) > 0)))
                    for x in lists
                )
                / 2**20,
                2,
            ),
            "delta_varint_base64": round(
                sum(4 * -(-varint_bytes(np.diff(x, prepend=-1)) // 3) for x in lists) / 2**20,
                2,
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--central-sigma", type=float, default=5.0)
    parser.add_argument("--local-sigma", type=float, default=60.0)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="central,local")
    args = parser.parse_args()
    info = machine()  # before the work: it records the load at the start
    result: dict = {
        "benchmark": "ledger_scaling",
        **info,
        "delta": DELTA,
        "rounds": args.rounds,
        "clients": args.clients,
        "rate": args.rate,
        "window": args.window,
        "seed": args.seed,
    }
    for name in args.settings.split(","):
        s = setting(name, args)
        print(f"{name}: bookkeeping", flush=True)
        timing, ledger, trail = bookkeeping(name, args, trace=False)
        memory, _, _ = bookkeeping(name, args, trace=True)
        print(f"{name}: pld", flush=True)
        result[name] = {
            "event": accounting.event_to_json(s["event"]),
            "relation": s["relation"],
            "bookkeeping": {**timing, **memory},
            "with_pld": with_pld(name, args),
            **pld_by_rounds(name, args, trail),
        }
        print(f"{name}: persistence", flush=True)
        result[name]["persistence"] = persistence(ledger, args)
        print(json.dumps(result[name], indent=1), flush=True)
    write("ledger_scaling", result)


if __name__ == "__main__":
    main()
