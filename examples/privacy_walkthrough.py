"""A tour of drencoder's privacy accounting, using only the public API.

Run it with `make demo` (or `.venv/bin/python examples/privacy_walkthrough.py`).
It answers the questions a federated run must answer before it starts:
1. What does a planned run cost under GDP, RDP and PLD?
2. Which noise multiplier reaches a target epsilon?
3. What do noise placement (local vs central), the neighbouring relation that holds for
   each, and the stage-1 statistics release cost?
"""

from __future__ import annotations

import warnings

from drencoder import accounting as A

warnings.simplefilter("ignore", A.GdpApproximationWarning)  # noted in the text instead

DELTA = 1e-5
CLIENTS, PER_ROUND, ROUNDS = 100, 10, 50
Q = PER_ROUND / CLIENTS


def row(name: str, eps: dict[str, float]) -> str:
    return f"  {name:<44} " + "  ".join(f"{eps[a]:>8.3f}" for a in ("gdp", "rdp", "pld"))


def main() -> None:
    header = f"  {'':<44} " + "  ".join(f"{a:>8}" for a in ("gdp", "rdp", "pld"))
    print(f"1. epsilon at delta={DELTA:g}: {ROUNDS} rounds, {CLIENTS} clients, q={Q:g}")
    print(header)
    for sigma in (0.8, 1.0, 2.0):
        event = A.rounds_event(noise_multiplier=sigma, sample_rate=Q, rounds=ROUNDS)
        print(
            row(f"central noise, Poisson sampling, sigma={sigma:g}", A.epsilons(event, delta=DELTA))
        )
    print("  (gdp with q < 1 is the central-limit approximation: it can understate epsilon)\n")

    print("2. the smallest sigma with epsilon <= 8 (central noise, Poisson sampling)")
    for acc in (A.Accountant.RDP, A.Accountant.PLD):
        sigma = A.calibrate_noise_multiplier(
            target_epsilon=8, delta=DELTA, sample_rate=Q, rounds=ROUNDS, accountant=acc
        )
        print(f"  {acc.value}: sigma = {sigma:.4f}")
    print("  (gdp is not offered: its central-limit approximation never decides a budget)\n")

    print("3. one ledger per noise placement, sigma=1.0, with a stage-1 statistics release")
    # Central noise with Poisson sampling: add/remove holds while the aggregator hides who
    # took part. Local noise: the server sees who took part, so a participant's data is
    # what must be protected: replace-one (sensitivity 2C).
    central = A.PrivacyLedger(delta=DELTA, relation=A.Relation.ADD_REMOVE)
    local = A.PrivacyLedger(delta=DELTA, relation=A.Relation.REPLACE_ONE)
    # The statistics release is seen per client: sensitivity 2C_s under either relation,
    # i.e. the equivalent Gaussian sigma_s / 2 in add/remove terms.
    central.record(A.gaussian_round(noise_multiplier=5.0 / 2), kind="statistics")
    local.record(A.gaussian_round(noise_multiplier=5.0), kind="statistics")
    for t in range(ROUNDS):
        # central: the aggregator adds noise once; sampling amplifies against outsiders.
        central.record(A.gaussian_round(noise_multiplier=1.0, sample_rate=Q), kind="round", round=t)
        # local: each participant noises its own upload; the server knows who took part,
        # so participants are charged a full Gaussian round and nobody else anything.
        participants = [(t * PER_ROUND + i) % CLIENTS for i in range(PER_ROUND)]
        local.record(
            A.gaussian_round(noise_multiplier=1.0), kind="round", round=t, clients=participants
        )
    print(header)
    print(row("central (trusted aggregator), add-remove", central.epsilons()))
    print(row("local (worst client, 5 rounds), replace-one", local.epsilons()))
    print(
        f"  charges: {local.charges()}; rounds per client: max "
        f"{max(local.participation().values())}"
    )


if __name__ == "__main__":
    main()
