"""Run a federation with canary clients and audit it: the empirical ε lower bound of one
party, beside the ε the accountant charged the canaries.

:class:`AuditSimulator` is the in-process simulator with ``m`` canary clients added to the
population (ids after the real clients'). They are sampled like any client (Poisson at the
run's rate; with fixed-size sampling they take part in every round), charged by the run's
ledger like any client, and their messages pass through the same clip → noise → validate →
aggregate path (:mod:`drencoder.audit.canaries` says what they send). A second ledger
holds the canaries' own charges: the ε the audit compares with.

The party the audit models follows the noise placement (docs/threat-model.md):

- ``local``: the **server**. It sees every client's noised message and who sent it, so
  the canaries follow the replace-one relation and each canary is scored on its own
  messages (as they leave the canary: in process, the tensor the server receives).
- ``central``: **whoever sees the released aggregates** (each round's noised mean, from
  which every global adapter is computed); the aggregator is trusted and not audited.
  Each canary is scored on the sum of the releases.

With ``seed_known`` the party also knows the run's seed. Under the research opt-in
``privacy.reproducible_noise`` it can then regenerate the noise: the harness replays the
run with the same config and seed and every client's clipped vector set to zero
(:class:`ZeroClients`), which draws exactly the same noise, and subtracts the replay's
scores. With noise from OS entropy the replay's noise is independent and the subtraction
only adds noise.

Canaries never appear in an ordinary run: only this module creates them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from drencoder import accounting
from drencoder.accounting.audit import audit_scores
from drencoder.audit.canaries import CanaryScores, CanarySet, draw_coins
from drencoder.config import RunConfig
from drencoder.config.methods import CodecKind
from drencoder.errors import ConfigError
from drencoder.federated.client.update import privatize
from drencoder.federated.protocol import (
    ClientResult,
    ClientTask,
    RoundPlan,
    Stage1Task,
    StatisticsReply,
    release_for,
)
from drencoder.federated.seeds import derive_seed
from drencoder.federated.server.sampling import sample_clients
from drencoder.federated.simulator import InProcessClients, Simulator
from drencoder.mechanisms import ClipPoint, GaussianMechanism, NoisePlacement, Sampling
from drencoder.prior import ClientStatistics

DEFAULT_CANARIES = 1000
DEFAULT_CONFIDENCE = 0.95

PARTIES = {
    NoisePlacement.LOCAL: (
        "server",
        "the aggregating server: sees every client's noised message and who sent it",
    ),
    NoisePlacement.CENTRAL: (
        "released aggregates",
        "anyone who sees each round's noised aggregate (every global adapter); the "
        "aggregator is trusted and not audited",
    ),
}
SEED_KNOWN = "; also knows the run's seed and replays the noise stream from it (reproducible noise)"


def party(config: RunConfig, *, seed_known: bool) -> tuple[str, str]:
    """The audited party's name and what it sees, for ``config``'s noise placement."""
    name, sees = PARTIES[config.privacy.placement]
    if seed_known:
        return f"{name} + seed", sees + SEED_KNOWN
    return name, sees


def check_auditable(config: RunConfig) -> None:
    """Refuse the configurations whose canaries would not live in the sent space."""
    from drencoder.config.methods import spec_for

    spec = spec_for(config.method)
    if (
        spec.private
        and spec.codec is not CodecKind.IDENTITY
        and config.privacy.clip_point is ClipPoint.UPDATE
    ):
        raise ConfigError(
            f"the audit places canaries in the clipped space, which with "
            f"privacy.clip_point=update and {config.method.value} is not the sent space; "
            "audit with privacy.clip_point=latent (the default)"
        )


class ZeroClients:
    """The real clients of a noise replay: every clipped vector (and stage-1 statistics
    vector) is zero, so each message is the noise alone, drawn in the order of the run."""

    def __init__(self, server: AuditSimulator) -> None:
        self.server = server

    def release_statistics(
        self, tasks: Sequence[Stage1Task], *, global_state: dict[str, torch.Tensor]
    ) -> Mapping[int, StatisticsReply | BaseException]:
        s = self.server
        n_epochs = s.config.stage1.epochs
        zeros = torch.zeros(2 * len(s.layout.blocks) * n_epochs)
        stats = ClientStatistics.from_vector(zeros, layout=s.layout, n_epochs=n_epochs)
        release = release_for(s.config)
        noise = s.generators["noise"]
        return {t.client: (release.release(stats, generator=noise), 0.0) for t in tasks}

    def train(
        self, plan: RoundPlan, *, global_state, codec, mechanism
    ) -> Mapping[int, ClientResult | BaseException]:
        zero = torch.zeros(self.server.canary_dim)
        return {
            t.client: self.server.privatized(zero, codec, mechanism, client=t.client)
            for t in plan.tasks
        }


class CanaryPool:
    """The run's client pool with the canaries' replies added (a wrapper: the real
    clients' work is the wrapped pool's)."""

    def __init__(self, inner, server: AuditSimulator) -> None:
        self.inner = inner
        self.server = server

    def release_statistics(self, tasks, *, global_state):
        return self.inner.release_statistics(tasks, global_state=global_state)

    def train(
        self, plan: RoundPlan, *, global_state, codec, mechanism
    ) -> Mapping[int, ClientResult | BaseException]:
        s = self.server
        canaries = s.canaries
        real = tuple(t for t in plan.tasks if not canaries.is_canary(t.client))
        replies: dict[int, ClientResult | BaseException] = {}
        if real:
            replies.update(
                self.inner.train(
                    dataclasses.replace(plan, tasks=real),
                    global_state=global_state,
                    codec=codec,
                    mechanism=mechanism,
                )
            )
        for task in plan.tasks:
            if not canaries.is_canary(task.client):
                continue
            j = canaries.index(task.client)
            sign = 0.0 if s.replay else (1.0 if canaries.included[j] else -1.0)
            clip = mechanism.clip_norm if mechanism is not None else s.config.privacy.clip_norm
            u = canaries.direction(j)
            reply = s.privatized(u * (sign * clip), codec, mechanism, client=task.client)
            if s.config.privacy.placement is NoisePlacement.LOCAL:
                # The server's view: in process, the message it receives is this tensor.
                s.scores.see_message(j, reply.message, direction=u)
            replies[task.client] = reply
        return replies


class AuditSimulator(Simulator):
    """A :class:`~drencoder.federated.simulator.Simulator` with canary clients.

    ``included`` are the canaries' coins; ``canary_seed`` the seed of their directions;
    ``replay`` makes this the noise replay of a run with the same config (every client
    sends a zero vector). No evaluation, adapter, plots or report are written: the run
    directory holds config.toml, metrics.jsonl and checkpoints.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir,
        *,
        included: np.ndarray,
        canary_seed: int,
        replay: bool = False,
        **kwargs,
    ) -> None:
        check_auditable(config)
        super().__init__(config, run_dir, **kwargs)
        self.included = np.asarray(included, dtype=bool)
        self.canary_seed = int(canary_seed)
        self.replay = replay
        self.clients = CanaryPool(ZeroClients(self) if replay else InProcessClients(self), self)
        self.canaries: CanarySet | None = None
        self.scores: CanaryScores | None = None
        self.canary_ledger = accounting.PrivacyLedger(delta=config.delta, relation=self.relation)

    @property
    def canary_dim(self) -> int:
        """The clipped space's dimension: the latent, or the update for clip_point=update
        (the identity codec's latent is the update)."""
        if self.config.privacy.clip_point is ClipPoint.UPDATE or self.mechanism is None:
            return self.codec.input_dim
        return self.codec.latent_dim

    def privatized(self, x, codec, mechanism: GaussianMechanism | None, *, client=None):
        """A client's reply for the clipped-space vector ``x`` (the path real clients take
        after encoding)."""
        if mechanism is None:
            return ClientResult(client=client, message=x.clone().to(torch.float32))
        message, bit = privatize(
            x,
            codec=codec,
            mechanism=mechanism,
            clip_point=self.config.privacy.clip_point,
            generator=self.generators["noise"],
        )
        wants_bit = self.config.privacy.clip_quantile is not None
        return ClientResult(client=client, message=message, clip_bit=bit if wants_bit else None)

    # -- set-up: the canaries exist once the codec does --------------------------------
    def start(self) -> None:
        super().start()
        self.canaries = CanarySet(
            count=len(self.included),
            dim=self.canary_dim,
            first_id=self.config.clients,
            seed=self.canary_seed,
            included=self.included,
        )
        self.scores = CanaryScores(self.canaries)

    def evaluate(self) -> dict:
        return {}  # an audit measures privacy, not utility: no scoring

    def finish(self) -> dict:
        return {"rounds_done": self.round}

    # -- the canaries in a round -------------------------------------------------------
    def plan_round(self, t: int) -> RoundPlan:
        plan = super().plan_round(t)
        cfg, m = self.config, len(self.included)
        if cfg.sampling.scheme is Sampling.POISSON:
            taking = sample_clients(
                num_clients=m,
                scheme=Sampling.POISSON,
                rate=cfg.sampling.rate,
                per_round=1,
                generator=self.generators["sampling"],
            )
        else:  # fixed-size cohorts claim no amplification: canaries take part every round
            taking = list(range(m))
        if self.relation is accounting.Relation.ADD_REMOVE and not self.replay:
            taking = [j for j in taking if self.included[j]]  # an "out" canary is absent
        ids = [self.config.clients + j for j in taking]
        tasks = plan.tasks + tuple(
            ClientTask(round=t, client=c, data_seed=0, train_seed=0) for c in ids
        )
        charge = plan.charge
        if charge is not None:
            event, charged = charge
            canaries_charged = None if charged is None else ids
            if charged is not None:
                charge = (event, [*charged, *ids])
            self.canary_ledger.record(event, kind="round", round=t, clients=canaries_charged)
        return RoundPlan(round=t, tasks=tasks, charge=charge)

    def release_round(self, plan: RoundPlan, messages: list):
        released = super().release_round(plan, messages)
        if self.config.privacy.placement is NoisePlacement.CENTRAL and released is not None:
            self.scores.see_release(released)
        return released

    def canary_epsilon(self) -> float | None:
        """ε the accountant charged the worst canary (None for a non-private method)."""
        if not self.spec.private or len(self.canary_ledger) == 0:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", accounting.GdpApproximationWarning)
            return self.canary_ledger.epsilon(self.config.privacy.accountant)


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One audited (method, placement, party): the empirical bound beside the accountant's."""

    method: str
    placement: str
    party: str
    sees: str
    relation: str
    accountant: str
    delta: float
    epsilon_theory: float | None
    """ε the accountant charged the worst canary (the rounds it took part in); None = no DP."""
    epsilon_run: float | None
    """ε the run printed for its worst client (with DR-Encoder's stage 1, which canaries skip)."""
    epsilon_lower_bound: float
    confidence: float
    canaries: int
    guesses: int
    correct: int
    noise_multiplier: float | None
    rounds: int
    seed_known: bool
    reproducible_noise: bool
    seconds: float

    @property
    def ratio(self) -> float | None:
        """empirical / theoretical ε (None without DP)."""
        if self.epsilon_theory is None or self.epsilon_theory == 0:
            return None
        return self.epsilon_lower_bound / self.epsilon_theory

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["ratio"] = self.ratio
        return out


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_audit(
    config: RunConfig,
    out_dir: str | Path,
    *,
    canaries: int = DEFAULT_CANARIES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed_known: bool = False,
    coin_seed: int | None = None,
    model_factory: Callable[[], tuple] | None = None,
    progress: bool = False,
) -> AuditEntry:
    """Audit one run of ``config`` with ``canaries`` canary clients into ``out_dir``.

    Writes ``out_dir/run`` (the audited run's directory), ``out_dir/replay`` with
    ``seed_known``, and ``out_dir/scores.json`` (scores, coins and the entry), and returns
    the entry. ``coin_seed`` fixes the canaries' coins (tests); by default they come from
    OS entropy. ``model_factory`` returns a fresh ``(model, tokenizer)`` (tests pass tiny
    models); by default ``config.model.name`` is loaded, once per run.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if (out / "scores.json").exists() or (out / "run").exists():
        raise ConfigError(f"{out} already holds an audit; choose another --out")
    check_auditable(config)
    coins = draw_coins(canaries, seed=coin_seed)
    canary_seed = derive_seed(config.seed, "audit-canaries")

    def load():
        if model_factory is not None:
            return model_factory()
        from drencoder.models import load_model

        return load_model(config.model.name, device=config.model.device, progress=progress)

    def simulate(name: str, *, replay: bool) -> AuditSimulator:
        sim = AuditSimulator(
            config,
            out / name,
            included=coins,
            canary_seed=canary_seed,
            replay=replay,
            model_and_tokenizer=load(),
            progress=progress,
        )
        sim.run()
        return sim

    sim = simulate("run", replay=False)
    scores = sim.scores.scores()
    if seed_known:
        replay = simulate("replay", replay=True)
        scores = scores - replay.scores.scores()
        del replay
    result = audit_scores(scores, coins, delta=config.delta, confidence=confidence)
    name, sees = party(config, seed_known=seed_known)
    eps_run = sim.epsilons()
    entry = AuditEntry(
        method=config.method.value,
        placement=config.privacy.placement.value,
        party=name,
        sees=sees,
        relation=sim.relation.value,
        accountant=config.privacy.accountant,
        delta=config.delta,
        epsilon_theory=_finite(sim.canary_epsilon()),
        epsilon_run=_finite(eps_run[config.privacy.accountant]) if eps_run else None,
        epsilon_lower_bound=result.epsilon_lower_bound,
        confidence=result.confidence,
        canaries=result.canaries,
        guesses=result.guesses,
        correct=result.correct,
        noise_multiplier=sim.noise_multiplier,
        rounds=sim.round,
        seed_known=seed_known,
        reproducible_noise=config.privacy.reproducible_noise,
        seconds=round(time.perf_counter() - started, 1),
    )
    del sim
    gc.collect()  # the simulators hold reference cycles (server ↔ pool) and a whole model
    (out / "scores.json").write_text(
        json.dumps(
            {
                "entry": entry.to_json(),
                "scores": [float(s) for s in scores],
                "included": [bool(b) for b in coins],
            }
        )
    )
    return entry
