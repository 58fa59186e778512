"""The in-process federated simulator (DESIGN §7): clients run one after another on one
shared base model, swapping only LoRA state, so memory does not grow with the client count.

A run: evaluate the base model; DR-Encoder stage 1 when the method has it; then rounds of
sample → local training → encode + privatise → aggregate + decode → update, each charged
to the privacy ledger; evaluate; save the adapter, plots and report. Every random choice
comes from one of the run's named generators (sampling, data, train, noise, stage1), all
derived from ``seed`` and checkpointed, so a resumed run is bit-identical to an
uninterrupted one. With ``privacy.secure_rng`` the streams that draw DP noise (noise,
stage1) are seeded from OS entropy instead; their states are still checkpointed, so resume
continues them exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from drencoder import accounting
from drencoder.codecs import Codec, IdentityCodec, RandomProjectionCodec, load_codec
from drencoder.codecs.report import reconstruction
from drencoder.config import RunConfig, dump_toml, load_config
from drencoder.errors import BudgetExceeded, CheckpointError, ConfigError
from drencoder.evaluation import eval_record, score_multiple_choice
from drencoder.federated import budget, rundir
from drencoder.federated.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from drencoder.federated.client import local_update, make_message
from drencoder.federated.methods import CodecKind, spec_for
from drencoder.federated.sampling import sample_clients
from drencoder.federated.server import aggregate
from drencoder.federated.stage1 import release_for, run_stage1
from drencoder.federated.validation import accept_messages, message_limits
from drencoder.federated.workload import build_workload
from drencoder.lora import (
    adapter_layout,
    apply_delta,
    attach_lora,
    get_adapter_state,
    set_adapter_state,
)
from drencoder.mechanisms import GaussianMechanism, noise_generator

GENERATORS = ("sampling", "data", "train", "noise", "stage1")
# The streams that draw DP noise; privacy.secure_rng seeds them from OS entropy.
SECURE_STREAMS = ("noise", "stage1")
_UNRELEASED = ("statistics_norms", "clipped_clients")


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the named stream, stable across machines and versions."""
    digest = hashlib.sha256(f"drencoder/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class Simulator:
    """Runs (or resumes) one federated fine-tuning job into a run directory.

    ``model_and_tokenizer`` injects an already loaded base model (tests use tiny random
    models); otherwise ``config.model.name`` is loaded. ``hook(event, **info)`` is called
    at fixed points (``"client_done"``, ``"round_done"``) for tests and integrations.
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
        if model_and_tokenizer is None:
            from drencoder.models import load_model

            model_and_tokenizer = load_model(
                config.model.name, device=config.model.device, progress=progress
            )
        base, self.tokenizer = model_and_tokenizer
        self.model = attach_lora(
            base, config.lora, seed=derive_seed(config.seed, "lora"), device=config.model.device
        )
        self.layout = adapter_layout(self.model, sent=self.spec.sent)
        self.global_state = get_adapter_state(self.model)
        self.workload = build_workload(config, self.tokenizer)
        self.generators = {
            name: noise_generator(
                derive_seed(config.seed, name),
                secure=config.privacy.secure_rng and name in SECURE_STREAMS,
            )
            for name in GENERATORS
        }
        self.release = release_for(config)
        self.ledger = accounting.PrivacyLedger(delta=config.delta)
        self.codec: Codec | None = None
        self.noise_multiplier: float | None = None
        self.sigma_source = "config"
        self.round = 0
        self.stop_reason = ""
        self.rows: list[dict] = []

    # -- set-up ------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _stats_event(self):
        if not self.spec.stage1:
            return None
        return self.release.dp_event()

    def _plan_noise(self) -> None:
        if not self.spec.private:
            return
        sigma = self.config.privacy.noise_multiplier
        if sigma is None:
            sigma = budget.calibrate_noise(self.config, self._stats_event())
            self.sigma_source = (
                f"calibrated for epsilon <= {self.config.target_epsilon:g} under "
                f"{self.config.privacy.accountant}"
            )
        self.noise_multiplier = float(sigma)

    @property
    def mechanism(self) -> GaussianMechanism | None:
        if not self.spec.private:
            return None
        p = self.config.privacy
        return GaussianMechanism(
            clip_norm=p.clip_norm, noise_multiplier=self.noise_multiplier, placement=p.placement
        )

    def _build_codec(self) -> Codec:
        c = self.config.codec
        if self.spec.codec is CodecKind.IDENTITY:
            return IdentityCodec(input_dim=self.layout.dim)
        if self.spec.codec is CodecKind.PROJECTION:
            return RandomProjectionCodec(
                input_dim=self.layout.dim,
                compression_ratio=c.compression_ratio,
                chunk_size=c.chunk_size,
                seed=derive_seed(self.config.seed, "projection"),
            )
        result = run_stage1(
            self.model,
            self.global_state,
            self.workload,
            self.config,
            layout=self.layout,
            generator=self.generators["stage1"],
            progress=self.progress,
        )
        if self.spec.private:
            self.ledger.record(result.dp_event, kind="statistics", label="stage-1 statistics")
        # Clients receive the encoder (and the normalisation); the decoder stays on the server.
        encoder_bytes = sum(
            t.numel() * t.element_size()
            for k, t in result.codec.state_dict().items()
            if ".decoder." not in k
        )
        self._append(
            {
                "kind": "stage1",
                "round": 0,
                "bytes_up": self.config.clients * _stats_bytes(self.layout, self.config),
                "bytes_down": self.config.clients * encoder_bytes,
                **{k: v for k, v in result.report.items() if k not in _UNRELEASED},
                # Known only inside a simulation (a real server never sees them): the
                # clients' unreleased statistics norms, for choosing stage1.clip_norm.
                "simulation_diagnostics": {
                    k: result.report[k] for k in _UNRELEASED if k in result.report
                },
            }
        )
        return result.codec

    # -- metrics -----------------------------------------------------------------------
    def _append(self, row: dict) -> None:
        self.rows.append(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def _epsilons(self) -> dict[str, float] | None:
        if not self.spec.private:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", accounting.GdpApproximationWarning)
            return self.ledger.epsilons()

    def evaluate(self) -> dict:
        """Score the global adapter on the fixed held-out set; append an ``eval`` row."""
        set_adapter_state(self.model, self.global_state)
        w, ev = self.workload, self.config.eval
        mc = score_multiple_choice(
            self.model,
            self.tokenizer,
            w.eval_items,
            fmt=w.fmt,
            n_shot=ev.n_shot,
            exemplars=w.exemplars,
            batch_size=self.config.data.batch_size,
            progress=self.progress,
        )
        eps = self._epsilons()
        record = eval_record(
            mc,
            task=w.task,
            model_name=self.config.model.name,
            adapter=self.layout.flatten(self.layout.restrict(self.global_state)),
            method=self.config.method.value,
            epsilon=eps[self.config.privacy.accountant] if eps else None,
            delta=self.config.delta if eps else None,
        )
        row = {
            "kind": "eval",
            "round": self.round,
            "accuracy": mc.accuracy,
            # Answer-only held-out loss: the mean NLL of the correct answer token, which
            # the scorer already computed (held-out loss on the same examples would
            # recompute exactly this, see docs/data.md).
            "heldout_loss": -mc.mean_logprob_correct,
            "questions": mc.n_questions,
            **{k: v for k, v in record.items() if k not in ("accuracy",)},
        }
        self._append(row)
        return row

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
                extra={"sigma_source": self.sigma_source, "stop_reason": self.stop_reason},
            ),
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        # Read and check everything first, write last: a damaged run directory raises
        # CheckpointError with its files untouched.
        codec = load_codec(self.run_dir / "checkpoints" / "codec")
        rows = rundir.read_metrics(self.metrics_path, ckpt.metrics_rows)
        try:
            set_adapter_state(self.model, ckpt.global_state)
        except ConfigError as exc:
            raise CheckpointError(
                f"adapter.safetensors of the round-{ckpt.round} checkpoint does not fit this "
                f"model and config ({' '.join(str(exc).split())[:300]}); resume with the "
                "run's own model, or start a new run with --out"
            ) from None
        try:
            for name, state in ckpt.rng_states.items():
                self.generators[name].set_state(state)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(
                f"rng.safetensors of the round-{ckpt.round} checkpoint holds an unusable "
                f"generator state ({type(exc).__name__}: {exc}); start a new run with --out"
            ) from None
        self.global_state = get_adapter_state(self.model)
        self.ledger = ckpt.ledger
        self.round = ckpt.round
        self.noise_multiplier = ckpt.noise_multiplier
        self.sigma_source = ckpt.extra.get("sigma_source", "config")
        self.stop_reason = ckpt.extra.get("stop_reason", "")
        self.rows = rows
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.codec = codec

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs) -> Simulator:
        """A simulator that continues ``run_dir`` from its last checkpoint.

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
        sim = cls(config, run_dir, **kwargs)
        sim._restore(ckpt)
        return sim

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
        self._plan_noise()
        self.evaluate()
        codec_dir = self.run_dir / "checkpoints" / "codec"
        self._build_codec().save(codec_dir)
        # Use the saved codec, exactly as a resumed run will.
        self.codec = load_codec(codec_dir)
        self._checkpoint()

    def run(self) -> dict:
        """Run every remaining round, then write the outputs; returns the summary."""
        self._check_free_space()
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
            eps = self._epsilons()
            if eps:
                bar.set_postfix({k: f"{v:.3g}" for k, v in eps.items()})
        if not self.rows or self.rows[-1].get("kind") != "eval":
            self.evaluate()
        return self.finish()

    def _check_free_space(self) -> None:
        """``StorageError`` before any training when the disk cannot hold the run."""
        c = self.config.codec
        codec_bytes = (
            0
            if self.codec is not None
            else rundir.codec_bytes_estimate(
                input_dim=self.layout.dim,
                chunk_size=c.chunk_size,
                compression_ratio=c.compression_ratio,
            )
        )
        adapter_bytes = sum(v.numel() * v.element_size() for v in self.global_state.values())
        need = rundir.estimate_run_bytes(adapter_bytes=adapter_bytes, codec_bytes=codec_bytes)
        rundir.check_free_space(self.run_dir, need_bytes=need)

    def run_round(self, t: int) -> None:
        cfg, mech = self.config, self.mechanism
        participants = sample_clients(
            num_clients=cfg.clients,
            scheme=cfg.sampling.scheme,
            rate=cfg.sampling.rate,
            per_round=cfg.sampling.per_round,
            generator=self.generators["sampling"],
        )
        charge = None
        if mech is not None:
            event, charged = budget.round_charge(mech, cfg, participants)
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
        start = time.perf_counter()
        messages, losses, recon, norms = [], [], [], []
        for c in tqdm(
            participants, desc=f"round {t} clients", leave=False, disable=not self.progress
        ):
            batches = self.workload.batches(
                c,
                steps=cfg.local.steps,
                batch_size=cfg.data.batch_size,
                generator=self.generators["data"],
            )
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generators["train"]))
            update, client_losses = local_update(
                self.model,
                self.global_state,
                batches,
                cfg.local,
                layout=self.layout,
                seed=seed,
                progress=self.progress,
                desc=f"client {c}",
            )
            losses.extend(client_losses)
            norms.append(float(update.norm()))
            if self.spec.codec is not CodecKind.IDENTITY:
                r = reconstruction(self.codec, update.unsqueeze(0))
                recon.append((r.rel_error, r.cosine))
            messages.append(
                make_message(
                    update,
                    codec=self.codec,
                    mechanism=mech,
                    clip_point=cfg.privacy.clip_point,
                    generator=self.generators["noise"],
                )
            )
            self.hook("client_done", round=t, client=c)
        # Rejected messages stay out of the aggregate; their clients are still charged.
        accepted, rejected = accept_messages(
            dict(zip(participants, messages, strict=True)),
            **message_limits(self.codec, mech, cfg.privacy.clip_point),
        )
        decoded = aggregate(
            list(accepted.values()),
            codec=self.codec,
            mechanism=mech,
            aggregation=cfg.privacy.aggregation,
            expected_clients=budget.expected_clients(cfg),
            generator=self.generators["noise"],
        )
        self.global_state = apply_delta(
            self.global_state, self.layout.unflatten(decoded), scale=cfg.server.lr
        )
        if charge is not None and (charge[1] is None or charge[1]):
            p = cfg.privacy
            self.ledger.record(
                charge[0],
                kind="round",
                round=t,
                clients=charge[1],
                label=f"round {t}: {p.placement.value} noise, {cfg.sampling.scheme.value} "
                f"sampling, clip {p.clip_point.value} at C={p.clip_norm:g}",
            )
        self.round = t
        row = {
            "kind": "round",
            "round": t,
            "participants": participants,
            "loss": sum(losses) / len(losses) if losses else math.nan,
            "epsilon": self._epsilons(),
            "noise_multiplier": self.noise_multiplier,
            "bytes_up": len(messages) * self.codec.bytes_per_upload,
            "bytes_down": len(participants) * self.layout.dim * 4,
            "update_norm": sum(norms) / len(norms) if norms else 0.0,
            "rejected": {str(c): reason for c, reason in rejected.items()},
            "seconds": time.perf_counter() - start,
        }
        if recon:
            row["reconstruction"] = {
                "rel_error": sum(r[0] for r in recon) / len(recon),
                "cosine": sum(r[1] for r in recon) / len(recon),
            }
        self._append(row)
        every = cfg.eval.every
        if every and t % every == 0:
            self.evaluate()
        if t % cfg.checkpoint.every == 0 or t == cfg.rounds:
            self._checkpoint()
        self.hook("round_done", round=t)

    def finish(self) -> dict:
        """Write the PEFT adapter, summary, plots and report for the current state."""
        from drencoder.federated.summary import write_outputs

        set_adapter_state(self.model, self.global_state)
        return write_outputs(self)


def _stats_bytes(layout, config: RunConfig) -> int:
    """Bytes one client uploads in stage 1: a mean and a std per block per epoch."""
    return 2 * len(layout.blocks) * config.stage1.epochs * 4
