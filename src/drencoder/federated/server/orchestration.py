"""The server's side of a run, whatever carries the messages (docs/design.md §2, §3, §7).

:class:`FederatedServer` owns the global adapter, the privacy ledger, the codec, the
server's named generators, the metrics, checkpoints and outputs of a run directory. A
round is two calls around the clients' work:

- :meth:`FederatedServer.plan_round`: sample clients, draw their seeds, refuse a round
  that would take ε past the target (:class:`RoundPlan`);
- :meth:`FederatedServer.finish_round`: take the replies that arrived, aggregate, decode,
  update the adapter, charge the ledger for the clients that replied, write the metrics
  row, checkpoint.

Who runs the clients is a :class:`ClientPool`: the in-process simulator
(:mod:`drencoder.federated.simulator`) or Flower SuperNodes
(:mod:`drencoder.integrations.flower`). Both use the same
:class:`~drencoder.federated.client.runtime.ClientRuntime` on the client side.

Every random choice of the server comes from one of the run's named generators
(sampling, data, train, noise, stage1), all checkpointed, so a run resumed from a
checkpoint after which nothing was sent continues exactly where it stopped. When a round's
tasks had already gone out (pending charges), the DP streams are reseeded from OS entropy
for the re-run: replaying their noise over a different set of replies would reveal the
difference. The streams a DP guarantee rests on (Poisson participation and every Gaussian
draw, :data:`~drencoder.federated.seeds.DP_STREAMS`) are seeded from OS entropy; the
others from ``seed``. ``privacy.reproducible_noise = true`` seeds every stream from
``seed`` (research only: the outputs then say that epsilon does not hold against anyone
who knows it).

Privacy charges are written ahead (:mod:`drencoder.federated.server.charges`):
a round is charged to the ledger and the charge persisted before its tasks go out, and
never refunded, whatever comes back.

The decoded update moves the adapter through the server optimizer
(:mod:`drencoder.federated.server.optimizer`, ``server.optimizer``), whose state is
checkpointed. With adaptive clipping (``privacy.clip_quantile``,
:mod:`drencoder.federated.adaptive_clipping`) the round's clip norm C_t is part of the
server's state: it is what the round's mechanism clips at (and what replies are validated
against), and after the round it moves by the noisy count of unclipped clients.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from drencoder import accounting
from drencoder.codecs import Codec, load_codec
from drencoder.config import RunConfig, dump_toml, load_config
from drencoder.config.methods import spec_for
from drencoder.errors import (
    BudgetExceeded,
    CheckpointError,
    ClientDropoutWarning,
    ConfigError,
    PrivacyWarning,
    UtilityWarning,
)
from drencoder.evaluation import eval_record, score_multiple_choice
from drencoder.federated import adaptive_clipping
from drencoder.federated.protocol import (
    ClientPool,
    ClientResult,
    ClientTask,
    RoundPlan,
    failure_code,
    release_for,
)
from drencoder.federated.record import RecordDpSgd, round_charges
from drencoder.federated.seeds import derive_seed, draw_seed, reseed_dp_streams, run_generators
from drencoder.federated.server import budget, rundir, structured
from drencoder.federated.server.aggregation import decode_release, release
from drencoder.federated.server.charges import absorb_pending, charge_ahead, clear_pending
from drencoder.federated.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from drencoder.federated.server.codec_setup import build_codec
from drencoder.federated.server.diagnostics import clip_warning, mean_diagnostics
from drencoder.federated.server.optimizer import GlobalOptimizer
from drencoder.federated.server.sampling import sample_clients
from drencoder.federated.server.validation import accept_messages, message_limits
from drencoder.federated.workload import Workload, build_workload, training_model
from drencoder.lora import (
    PrefixCachedLM,
    adapter_layout,
    attach_lora,
    get_adapter_state,
    set_adapter_state,
)
from drencoder.mechanisms import GaussianMechanism, PrivacyUnit
from drencoder.reporting.schema import NOT_COVERED, EvalRow, MetricsRow, RoundRow, check_row

log = logging.getLogger("drencoder")


class FederatedServer:
    """Runs (or resumes) the server side of one federated job into a run directory.

    ``model_and_tokenizer`` injects an already loaded base model (tests use tiny random
    models); otherwise ``config.model.name`` is loaded. ``hook(event, **info)`` is called
    at fixed points (``"round_done"``, and the pool's own events) for tests and
    integrations. Set :attr:`clients` to a :class:`ClientPool` before :meth:`run`.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        model_and_tokenizer=None,
        progress: bool = True,
        hook: Callable[..., None] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.hook = hook or (lambda event, **info: None)
        self.spec = spec_for(config.method)
        started = time.perf_counter()
        if model_and_tokenizer is None:
            from drencoder.models import load_model

            model_and_tokenizer = load_model(
                config.model.name, device=config.model.device, progress=progress
            )
        self.load_seconds = time.perf_counter() - started
        base, self.tokenizer = model_and_tokenizer
        self.model = attach_lora(
            base, config.lora, seed=derive_seed(config.seed, "lora"), device=config.model.device
        )
        # What clients train and the server scores: the model, or its prefix-cached top.
        self.lm = training_model(self.model, config)
        self.layout = adapter_layout(self.model, sent=self.spec.sent)
        self.global_state = get_adapter_state(self.model)
        self.workload = build_workload(config, self.tokenizer)
        self.generators = run_generators(
            config.seed, reproducible_noise=config.privacy.reproducible_noise
        )
        self.release = release_for(config)
        self.relation = budget.relation(config)
        self.relation_warning = budget.relation_warning(config)
        if self.relation_warning and self.spec.private:
            warnings.warn(self.relation_warning, PrivacyWarning, stacklevel=2)
        self.ledger = accounting.PrivacyLedger(delta=config.delta, relation=self.relation)
        self.codec: Codec | None = None
        self.codec_dir = "codec"
        """Where under ``checkpoints/`` the current codec is saved (a refreshed subspace
        codec has its own ``codec-NNNN``; :mod:`drencoder.federated.server.structured`)."""
        self.codec_history: list = []
        self.codec_cumulative: torch.Tensor | None = None
        """``codec.basis = history``: the sum of the decoded aggregates so far."""
        self.proxy: Workload | None = None
        """``codec.basis = proxy``: the public data the server computes updates on."""
        self.noise_multiplier: float | None = None
        """The round's noise multiplier as accounted (with adaptive clipping, the effective
        z of update and count release together)."""
        self.update_noise_multiplier: float | None = None
        """z_Δ, the multiplier of the update's noise (= :attr:`noise_multiplier` unless
        adaptive clipping takes a share for the count release)."""
        self.count_noise = budget.count_noise(config) if self.spec.private else None
        """σ_b of adaptive clipping's count release; None with a fixed clip norm."""
        self.clip_norm = float(config.privacy.clip_norm)
        """The clip norm of the next round (moves with adaptive clipping)."""
        self.optimizer = GlobalOptimizer(config.server)
        self.sigma_source = "config"
        self.round = 0
        self.stop_reason = ""
        self.rows: list[MetricsRow] = []
        self.clients: ClientPool | None = None
        self._warned_clipping = False

    # -- set-up ------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _plan_noise(self) -> None:
        if not self.spec.private:
            return
        sigma = self.config.privacy.noise_multiplier
        if sigma is None:
            stats_event = structured.stage1_event(self)
            sigma = budget.calibrate_noise(self.config, stats_event, examples=self.example_counts)
            self.sigma_source = (
                f"calibrated for epsilon <= {self.config.target_epsilon:g} under "
                f"{self.config.privacy.accountant}"
            )
        self.noise_multiplier = float(sigma)
        self._split_noise()

    def _split_noise(self) -> None:
        """z_Δ from the round's z: all of it, or z's share left by the count release."""
        if self.noise_multiplier is None or self.count_noise is None:
            self.update_noise_multiplier = self.noise_multiplier
            return
        self.update_noise_multiplier = adaptive_clipping.update_noise_multiplier(
            self.noise_multiplier, self.count_noise
        )

    @property
    def record_level(self) -> bool:
        """Whether epsilon protects records (DP-SGD in each client) rather than clients."""
        return self.spec.private and self.config.privacy.unit is PrivacyUnit.RECORD

    @property
    def example_counts(self) -> list[int]:
        """Each client's number of training examples (record-level q = b / n)."""
        return [len(examples) for examples in self.workload.clients]

    @property
    def record_dp_sgd(self) -> RecordDpSgd | None:
        """Record-level DP: the DP-SGD every participant runs; None at client level."""
        if not self.record_level or self.noise_multiplier is None:
            return None
        return RecordDpSgd.from_config(self.config, self.noise_multiplier)

    @property
    def mechanism(self) -> GaussianMechanism | None:
        """The client-level mechanism of the sent update; None without DP and with
        record-level DP (the update is post-processing of DP-SGD, sent as it is)."""
        if not self.spec.private or self.record_level:
            return None
        return GaussianMechanism(
            clip_norm=self.clip_norm,
            noise_multiplier=self.update_noise_multiplier,
            placement=self.config.privacy.placement,
        )

    def pool(self) -> ClientPool:
        """The client pool the server's tasks go to (the simulator's or Flower's)."""
        if self.clients is None:
            raise ConfigError(
                "this FederatedServer has no clients: set server.clients to a ClientPool "
                "(the Simulator and the Flower ServerApp do this)"
            )
        return self.clients

    # -- privacy charges ---------------------------------------------------------------
    def charge(self, event, *, kind: str, label: str, round=None, clients=None) -> None:
        """Record ``event`` in the ledger and persist it before the release it pays for."""
        charge_ahead(
            self.ledger, self.run_dir, event, kind=kind, label=label, round=round, clients=clients
        )

    def charge_round(self, plan: RoundPlan) -> None:
        """Charge round ``plan.round`` before its tasks are sent (never refunded): with local
        noise every *sampled* client, whether or not its reply arrives; central noise every
        client."""
        for event, charged in plan.record_charges:
            label = plan.record.label(plan.round, self.example_counts[charged[0]])
            self.charge(event, kind="round", round=plan.round, clients=charged, label=label)
        if plan.charge is not None:
            event, charged = plan.charge
            label = budget.round_label(
                self.config,
                self.relation,
                plan.round,
                clip_norm=self.clip_norm,
                update_noise=self.update_noise_multiplier,
            )
            self.charge(event, kind="round", round=plan.round, clients=charged, label=label)

    # -- metrics -----------------------------------------------------------------------
    def append_row(self, row: dict) -> None:
        """Check ``row`` against its type (:mod:`drencoder.reporting.schema`) and append it
        to ``metrics.jsonl`` and to :attr:`rows`."""
        row = check_row(row)
        self.rows.append(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def epsilons(self) -> dict[str, float] | None:
        """ε of the ledger so far under each accountant (None for a non-private run)."""
        if not self.spec.private:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", accounting.GdpApproximationWarning)
            return self.ledger.epsilons()

    def evaluate(self) -> EvalRow:
        """Score the global adapter on the fixed held-out set; append an ``eval`` row."""
        set_adapter_state(self.model, self.global_state)
        w, ev = self.workload, self.config.eval
        mc = score_multiple_choice(
            self.lm,
            self.tokenizer,
            w.eval_items,
            fmt=w.fmt,
            n_shot=ev.n_shot,
            exemplars=w.exemplars,
            batch_size=ev.batch_size,
            progress=self.progress,
        )
        self._flush_prefix_cache()
        eps = self.epsilons()
        spent = eps[self.config.privacy.accountant] if eps else None
        if spent is not None and not math.isfinite(spent):
            spent = None  # a release without noise (stage1.release_noise = false): no guarantee
        record = eval_record(
            mc,
            task=w.task,
            model_name=self.config.model.name,
            adapter=self.layout.flatten(self.layout.restrict(self.global_state)),
            method=self.config.method.value,
            epsilon=spent,
            delta=self.config.delta if spent is not None else None,
        )
        row: EvalRow = {
            "kind": "eval",
            "round": self.round,
            "accuracy": mc.accuracy,
            # Answer-only held-out loss: the mean NLL of the correct answer token, which
            # the scorer already computed (held-out loss on the same examples would
            # recompute exactly this, see docs/data.md).
            "heldout_loss": -mc.mean_logprob_correct,
            "questions": mc.n_questions,
            # Per question, 1 = answered correctly: the paired comparison with the base
            # model (summary.json's "utility") needs them.
            "correct": "".join(
                "1" if p == it.answer else "0"
                for p, it in zip(mc.predictions, w.eval_items, strict=True)
            ),
            **{k: v for k, v in record.items() if k not in ("accuracy",)},  # type: ignore[typeddict-item]
        }
        if eps:
            row["relation"] = self.relation.value
        self.append_row(row)
        return row

    # -- the prefix cache --------------------------------------------------------------
    def warm_prefix_cache(self) -> None:
        """With adapters above a frozen prefix, compute every client example's prefix
        states now (once; later runs read them from disk), with a progress bar. The
        held-out prompts are cached by the first evaluation."""
        if isinstance(self.lm, PrefixCachedLM):
            rows = [ex["input_ids"] for examples in self.workload.clients for ex in examples]
            self.lm.warm(rows, progress=self.progress)

    def one_time_work(self) -> dict:
        """Seconds spent loading (and on a first call converting) the model, and the prefix
        states this process computed (``computed`` 0 when all came from the disk cache)."""
        out = {"load_model_seconds": round(self.load_seconds, 1)}
        if isinstance(self.lm, PrefixCachedLM):
            out["prefix_cache"] = self.lm.store.report()
        return out

    def _flush_prefix_cache(self) -> None:
        if isinstance(self.lm, PrefixCachedLM):
            self.lm.store.flush()

    # -- checkpoints -------------------------------------------------------------------
    def _checkpoint(self) -> None:
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                round=self.round,
                global_state=self.global_state,
                rng_states={k: g.get_state() for k, g in self.generators.items()},
                ledger=self.ledger,
                metrics_rows=len(self.rows),
                noise_multiplier=self.noise_multiplier,
                extra={
                    "sigma_source": self.sigma_source,
                    "stop_reason": self.stop_reason,
                    "clip_norm": self.clip_norm,
                    "server_optimizer": self.optimizer.state_scalars(),
                    "codec_dir": self.codec_dir,
                },
                optimizer_state=self.optimizer.state_tensors(),
            ),
        )
        clear_pending(self.run_dir)

    def _restore(self, ckpt: Checkpoint) -> None:
        # Read and check everything first, write last: a damaged run directory raises
        # CheckpointError with its files untouched.
        codec = structured.restore(self, ckpt.extra.get("codec_dir", "codec"))
        rows = rundir.read_metrics(self.metrics_path, ckpt.metrics_rows)
        if ckpt.ledger.relation is not self.relation:
            raise CheckpointError(
                f"the checkpoint's ledger was accounted under the {ckpt.ledger.relation.value} "
                f"relation, this config under {self.relation.value}; an event's charge "
                "depends on it. Resume with the run's own config.toml (and privacy.relation), "
                "or start a new run with --out"
            )
        clip_norm = ckpt.extra.get("clip_norm", self.config.privacy.clip_norm)
        if not (
            isinstance(clip_norm, int | float)
            and not isinstance(clip_norm, bool)
            and math.isfinite(clip_norm)
            and clip_norm > 0
        ):
            raise CheckpointError(
                f"the round-{ckpt.round} checkpoint's state.json has clip_norm={clip_norm!r}, "
                "not a positive number; point checkpoints/latest.json at the previous "
                "round-NNNN directory, or start a new run with --out"
            )
        self.optimizer.load(ckpt.optimizer_state, ckpt.extra.get("server_optimizer", {}))
        rundir.restore_model_state(self, ckpt)
        self.ledger = ckpt.ledger
        interrupted = absorb_pending(self.ledger, self.run_dir, after=len(ckpt.ledger))
        if interrupted and not self.config.privacy.reproducible_noise:
            # A round's tasks went out after this checkpoint. Replaying the checkpointed
            # noise over a different set of replies (a dropout, a late reply) would reveal
            # their difference, so the re-run draws fresh noise and participation.
            reseed_dp_streams(self.generators)
        self.round = ckpt.round
        self.noise_multiplier = ckpt.noise_multiplier
        self._split_noise()
        self.clip_norm = float(clip_norm)
        self.sigma_source = ckpt.extra.get("sigma_source", "config")
        self.stop_reason = ckpt.extra.get("stop_reason", "")
        self.rows = rows
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.codec = codec

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs):
        """An instance that continues ``run_dir`` from its last checkpoint.

        The config and the checkpoint are read before the model is loaded, so a damaged
        run directory fails fast; nothing in it is written until all of it has been read.
        """
        run_dir = Path(run_dir)
        config_path = run_dir / "config.toml"
        if not config_path.is_file():
            raise CheckpointError(
                f"{run_dir} is not a drencoder run directory (no config.toml); give the --out "
                "directory of an earlier `drencoder run`"
            )
        config = load_config(config_path)
        ckpt = load_checkpoint(run_dir)
        server = cls(config, run_dir, **kwargs)
        server._restore(ckpt)
        return server

    # -- the run -----------------------------------------------------------------------
    def start(self) -> None:
        """Fresh run: write the config, evaluate, plan σ, stage 1, checkpoint round 0."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.run_dir / "checkpoints" / "latest.json").exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run; resume it with --resume {self.run_dir} "
                "or choose another --out"
            )
        (self.run_dir / "config.toml").write_text(dump_toml(self.config))
        self.metrics_path.write_text("")
        # An earlier start of this directory may have released stage-1 statistics before
        # it was killed: those charges stay.
        absorb_pending(self.ledger, self.run_dir, after=0)
        self._plan_noise()
        self.evaluate()
        codec_dir = self.run_dir / "checkpoints" / "codec"
        build_codec(self).save(codec_dir)
        # Use the saved codec, exactly as a resumed run will.
        self.codec = load_codec(codec_dir)
        self._checkpoint()

    def run(self) -> dict:
        """Run every remaining round, then write the outputs; returns the summary."""
        rundir.check_run_space(self)
        self.warm_prefix_cache()
        if self.codec is None:
            self.start()
        cfg = self.config
        bar = tqdm(
            range(self.round + 1, cfg.rounds + 1),
            desc="rounds",
            initial=self.round,
            total=cfg.rounds,
            disable=not self.progress,
        )
        for t in bar:
            if self.stop_reason:
                break
            try:
                self.run_round(t)
            except BudgetExceeded as exc:
                self.stop_reason = str(exc)
                self._checkpoint()
                break
            eps = self.epsilons()
            if eps:
                bar.set_postfix({k: f"{v:.3g}" for k, v in eps.items() if v is not None})
        if not self.rows or self.rows[-1]["kind"] != "eval":
            self.evaluate()
        return self.finish()

    def run_round(self, t: int) -> None:
        """Plan round ``t``, let the client pool do the clients' work, finish the round."""
        start = time.perf_counter()
        plan = self.plan_round(t)
        self.charge_round(plan)
        replies = self.pool().train(
            plan, global_state=self.global_state, codec=self.codec, mechanism=self.mechanism
        )
        self.finish_round(plan, replies, started=start)

    def _record_plan(self, t: int, sampled: list[int]) -> tuple[list[int], list[int]]:
        """Record-level budget stop per client: the sampled clients whose round stays within
        the target, and those left out. Raises :class:`BudgetExceeded` when no client at
        all could take part."""
        cfg, record = self.config, self.record_dp_sgd
        if cfg.target_epsilon is None:
            return sampled, []
        counts = self.example_counts

        def fits(c: int) -> bool:
            return not self.ledger.would_exceed(
                record.event(counts[c]),
                target_epsilon=cfg.target_epsilon,
                accountant=cfg.privacy.accountant,
                clients=[c],
            )

        if not any(fits(c) for c in range(cfg.clients)):
            raise BudgetExceeded(
                f"Stopped before round {t}: every client has spent its record-level budget "
                f"(one more round would take its epsilon past {cfg.target_epsilon:g} under "
                f"{cfg.privacy.accountant})."
            )
        keep = [c for c in sampled if fits(c)]
        return keep, [c for c in sampled if c not in keep]

    def plan_round(self, t: int) -> RoundPlan:
        """Sample the round's clients, draw their seeds, check the budget.

        Raises :class:`BudgetExceeded` (before anything is sent) when the round would take
        ε past ``target_epsilon``, assuming every sampled client replies.
        """
        cfg, mech = self.config, self.mechanism
        sampled = sample_clients(
            num_clients=cfg.clients,
            scheme=cfg.sampling.scheme,
            rate=cfg.sampling.rate,
            per_round=cfg.sampling.per_round,
            generator=self.generators["sampling"],
        )
        exhausted: list[int] = []
        if self.record_level:
            sampled, exhausted = self._record_plan(t, sampled)
        tasks = tuple(
            ClientTask(
                round=t,
                client=c,
                data_seed=draw_seed(self.generators["data"]),
                train_seed=draw_seed(self.generators["train"]),
            )
            for c in sampled
        )
        if self.record_level:
            record = self.record_dp_sgd
            return RoundPlan(
                round=t,
                tasks=tasks,
                charge=None,
                record=record,
                record_charges=tuple(round_charges(record, sampled, self.example_counts)),
                exhausted=tuple(exhausted),
            )
        charge = None
        if mech is not None:
            event, charged = budget.round_charge(mech, cfg, sampled, count_noise=self.count_noise)
            charge = (event, charged)
            if cfg.target_epsilon is not None and self.ledger.would_exceed(
                event,
                target_epsilon=cfg.target_epsilon,
                accountant=cfg.privacy.accountant,
                clients=charged,
            ):
                raise BudgetExceeded(
                    f"Stopped before round {t}: it would take epsilon past the target "
                    f"{cfg.target_epsilon:g} under {cfg.privacy.accountant}."
                )
        return RoundPlan(round=t, tasks=tasks, charge=charge)

    def collect(
        self, plan: RoundPlan, replies: Mapping[int, ClientResult | BaseException]
    ) -> tuple[dict[int, ClientResult], dict[int, str], dict[int, str]]:
        """The replies the round keeps, the dropouts and the rejected messages.

        The one place where received messages are gathered before aggregation. A client
        that raised, returned an error or did not reply is a dropout (``failed``); a reply
        from a client that was not sampled is ignored. A message that arrived but fails
        validation (:mod:`drencoder.federated.server.validation`) is ``rejected``: it stays out
        of the aggregate, but its client did release it, so the ledger still charges it.
        """
        arrived: dict[int, ClientResult] = {}
        failed: dict[int, str] = {}
        for c in plan.sampled:
            reply = replies.get(c)
            if reply is None or isinstance(reply, BaseException):
                failed[c] = failure_code(reply)
            else:
                arrived[c] = reply
        accepted, rejected = accept_messages(
            {c: r.message for c, r in arrived.items()},
            **message_limits(self.codec, self.mechanism, self.config.privacy.clip_point),
        )
        if self.count_noise is not None:
            # Adaptive clipping: the clip indicator is inside the mechanism and must be a
            # bit; a reply with anything else stays out of both sums (and is charged).
            for c in list(accepted):
                if not adaptive_clipping.check_bit(arrived[c].clip_bit):
                    del accepted[c]
                    rejected[c] = "bad-clip-bit"
                    log.warning("message of client %s rejected: its clip bit is not 0 or 1", c)
        return {c: arrived[c] for c in accepted}, failed, rejected

    def release_round(self, plan: RoundPlan, messages: list) -> torch.Tensor | None:
        """What round ``plan.round`` releases in the latent space before decoding
        (:func:`~drencoder.federated.server.aggregation.release`): the noised mean of the accepted
        ``messages`` (sorted by client), or the messages themselves for
        ``decode_then_mean``. A privacy audit observes the release here."""
        return release(
            messages,
            codec=self.codec,
            mechanism=self.mechanism,
            aggregation=self.config.privacy.aggregation,
            expected_clients=budget.expected_clients(self.config),
            generator=self.generators["noise"],
        )

    def finish_round(
        self,
        plan: RoundPlan,
        replies: Mapping[int, ClientResult | BaseException],
        *,
        started: float | None = None,
    ) -> RoundRow:
        """Aggregate what arrived, update the adapter; the metrics row. The round was
        charged when it was sent (:meth:`charge_round`)."""
        cfg, t = self.config, plan.round
        received, failed, rejected = self.collect(plan, replies)
        if failed:
            warnings.warn(
                f"round {t}: {len(received)} of {len(plan.sampled)} sampled clients replied; "
                f"the round goes on with those (dropped: {failed})",
                ClientDropoutWarning,
                stacklevel=2,
            )
        results = [received[c] for c in sorted(received)]
        released = self.release_round(plan, [r.message for r in results])
        decoded = decode_release(released, codec=self.codec, aggregation=cfg.privacy.aggregation)
        self.global_state = self.optimizer.apply(self.global_state, self.layout.unflatten(decoded))
        refreshed = structured.refresh(self, decoded, t)  # history/proxy codecs; else None
        clip_norm = self.clip_norm  # the round's C, what its messages were clipped at
        fraction = None
        if self.count_noise is not None:
            fraction = adaptive_clipping.noisy_fraction(
                [r.clip_bit for r in results],
                count_noise=self.count_noise,
                expected_clients=budget.expected_clients(cfg),
                generator=self.generators["noise"],
            )
            self.clip_norm = adaptive_clipping.next_clip_norm(
                clip_norm,
                fraction,
                target_quantile=cfg.privacy.clip_quantile,
                lr=cfg.privacy.clip_lr,
            )
        self.round = t
        row: RoundRow = {
            "kind": "round",
            "round": t,
            "sampled": plan.sampled,
            "participants": sorted({*received, *rejected}),
            "failed": {str(c): reason for c, reason in failed.items()},
            "rejected": {str(c): reason for c, reason in rejected.items()},
            "epsilon": self.epsilons(),
            "unit": self.config.privacy.unit.value if self.spec.private else None,
            "relation": self.relation.value if self.spec.private else None,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": clip_norm if self.spec.private else None,
            # Measured on what arrived: latent_dim × 4 per message (float32 latents).
            "bytes_up": sum(r.message.numel() * r.message.element_size() for r in results),
            "bytes_down": len(plan.sampled) * self.layout.dim * 4,
            "seconds": time.perf_counter() - started if started is not None else 0.0,
        }
        if refreshed:
            row["codec"] = refreshed
        if plan.exhausted:
            row["exhausted"] = list(plan.exhausted)
        declared = {
            str(r.client): r.declared_epsilon for r in results if r.declared_epsilon is not None
        }
        if declared:
            # What the clients say their own record-level ledgers stand at (Flower nodes).
            row["declared_record_epsilon"] = declared
        if fraction is not None:
            # Released (noisy) values only: the count is a DP release, C is its
            # post-processing.
            row["adaptive_clipping"] = {
                "update_noise_multiplier": self.update_noise_multiplier,
                "count_noise": self.count_noise,
                "unclipped_fraction": fraction,
                "next_clip_norm": self.clip_norm,
            }
        diagnostics = mean_diagnostics([r.diagnostics for r in results])
        if diagnostics:
            row[NOT_COVERED] = diagnostics
            message = clip_warning(t, diagnostics)
            if message is not None and not self._warned_clipping:
                self._warned_clipping = True
                warnings.warn(message, UtilityWarning, stacklevel=2)
        self.append_row(row)
        every = cfg.eval.every
        if every and t % every == 0:
            self.evaluate()
        if t % cfg.checkpoint.every == 0 or t == cfg.rounds:
            self._checkpoint()
        self.hook("round_done", round=t)
        return row

    def finish(self) -> dict:
        """Write the PEFT adapter, summary, plots and report for the current state."""
        from drencoder.federated.server.summary import write_outputs

        set_adapter_state(self.model, self.global_state)
        return write_outputs(self)
