"""How much privacy do the runs give, measured? The one-run audit on the real smoke preset.

For each scenario, ``drencoder.audit.run_audit`` runs the smoke preset (SmolLM2-135M, 2
clients, 2 rounds) with ``--canaries`` canary clients and records the empirical ε lower
bound (95 % confidence) beside the ε the accountant charged the canaries. Scenarios:

- ``central``: the five methods with central noise (the party: whoever sees the released
  aggregates). ``local`` (the preset's placement, the server's view) is what
  ``drencoder audit --preset smoke`` reports; add it with ``--scenarios local``.
- ``seed-bug``: ``dp-fedavg-lora`` at ε = 1 with ``privacy.reproducible_noise`` and a party
  that knows the seed (local and central), and the control: the same party against noise
  from OS entropy (local).

- ``ideal`` (no model, seconds; written to ``results/audit_ideal.json``): the same
  statistics on an exact Gaussian mechanism with the canaries' privacy (GDP μ = 2√T/σ,
  T = 2 rounds, σ calibrated for ε = 8 under replace-one), over ``--trials`` draws of the
  coins and the noise: what the one-run test can show at best with this many canaries.

Usage (about 2 min per identity-codec method and under 1 min per codec method on 2 shared
cores; the seed-bug runs replay the run once more):

    python benchmarks/audit.py --scenarios local,central,seed-bug
    python benchmarks/audit.py --scenarios ideal
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

from common import machine, write

from drencoder.audit import run_audit
from drencoder.config import load_config

METHODS = ("fedavg-lora", "dp-fedavg-lora", "ffa-lora-dp", "dp-random-projection", "dr-encoder")


def scenarios(names: list[str]):
    for placement in ("local", "central"):
        if placement in names:
            for method in METHODS:
                yield placement, [f"method={method}", f"privacy.placement={placement}"], False
    if "seed-bug" in names:
        bug = ["method=dp-fedavg-lora", "target_epsilon=1", "privacy.reproducible_noise=true"]
        for placement in ("local", "central"):
            yield "seed-bug", [*bug, f"privacy.placement={placement}"], True
        control = ["method=dp-fedavg-lora", "target_epsilon=1", "privacy.placement=local"]
        yield "seed-bug-control", control, True


def ideal(canaries: int, trials: int) -> dict:
    """The one-run bound on an exact Gaussian mechanism of the smoke preset's privacy."""
    import dp_accounting
    import numpy as np

    from drencoder import accounting
    from drencoder.accounting.audit import audit_scores

    rounds, delta = 2, 1e-5

    def event(s: float):
        return accounting.repeated(dp_accounting.GaussianDpEvent(s), rounds)

    sigma = accounting.calibrate(
        event, target_epsilon=8.0, delta=delta, accountant="pld", relation="replace-one"
    )
    mu = 2 * rounds**0.5 / sigma
    rng = np.random.default_rng(0)
    bounds = []
    for _ in range(trials):
        coins = rng.random(canaries) < 0.5
        scores = np.where(coins, mu / 2, -mu / 2) + rng.standard_normal(canaries)
        bounds.append(audit_scores(scores, coins, delta=delta).epsilon_lower_bound)
    eps = accounting.epsilon(event(sigma), delta=delta, accountant="pld", relation="replace-one")
    return {
        "question": "one-run audit bound on an exact Gaussian mechanism at the smoke "
        "preset's privacy (what the test can show at best)",
        "noise_multiplier": sigma,
        "mu": mu,
        "epsilon_theory": eps,
        "canaries": canaries,
        "trials": trials,
        "epsilon_lower_bound": {
            "mean": float(np.mean(bounds)),
            "min": float(np.min(bounds)),
            "max": float(np.max(bounds)),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="central,seed-bug")
    p.add_argument("--canaries", type=int, default=1000)
    p.add_argument("--preset", default="smoke")
    p.add_argument("--trials", type=int, default=50)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.scenarios == "ideal":
        write("audit_ideal", {**ideal(args.canaries, args.trials), "machine": machine()})
        return
    info = machine()
    entries = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (scenario, overrides, seed_known) in enumerate(scenarios(args.scenarios.split(","))):
            config = load_config(preset=args.preset, overrides=overrides)
            entry = run_audit(
                config, f"{tmp}/{i}", canaries=args.canaries, seed_known=seed_known
            ).to_json()
            entry["scenario"] = scenario
            entries.append(entry)
            print(
                f"{scenario:<17}{entry['method']:<22}{entry['placement']:<8}"
                f"theory {entry['epsilon_theory']}  lower {entry['epsilon_lower_bound']:.3f}  "
                f"{entry['correct']}/{entry['guesses']}  {entry['seconds']} s",
                flush=True,
            )
    write(
        "audit",
        {
            "question": "empirical epsilon lower bound (one-run audit) vs accountant, smoke preset",
            "preset": args.preset,
            "canaries": args.canaries,
            "machine": info,
            "seconds": round(time.perf_counter() - started, 1),
            "audits": entries,
        },
    )


if __name__ == "__main__":
    main()
