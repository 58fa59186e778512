"""One client's side of the protocol, the same object in the simulator and in Flower.

A :class:`ClientRuntime` holds what a client owns: the base model with its LoRA adapter
(shared by all simulated clients, one per Flower SuperNode), the workload its data comes
from, and the generator its privacy noise is drawn from. The server sends it, per round,
the global adapter, the encoder and a :class:`ClientTask` (client index and seeds for
batch order and training); it returns a :class:`ClientResult` whose ``message`` is the
privatised latent, the only tensor that leaves the client.

Randomness. Batch order and training seeds may come from the server (they protect
nothing). The noise of ``local`` placement and of the stage-1 release must not: a server
that knew the noise could subtract it. The simulator passes its ``noise`` generator; the
Flower client one seeded from the operating system's entropy.

What a real client uploads: ``message`` and, with adaptive clipping, ``clip_bit`` (inside
the mechanism: the server releases only a noisy count of them), nothing else computed from
its data. ``diagnostics``
(mean local training loss, pre-clip update norm, reconstruction error of the encoder on the
real update) are computed from raw data; they exist only inside a simulation, where the
run's outputs mark them as not covered by epsilon.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from drencoder.codecs import Codec, IdentityCodec
from drencoder.codecs.report import reconstruction
from drencoder.config import RunConfig
from drencoder.errors import ConfigError
from drencoder.federated.client.stage1 import release_client_statistics
from drencoder.federated.client.update import local_update, local_update_dp, make_reply
from drencoder.federated.protocol import ClientResult, ClientTask, Stage1Task, release_for
from drencoder.federated.record import RecordDpSgd
from drencoder.federated.workload import Workload
from drencoder.lora import Layout
from drencoder.lora.dp_sgd import DpSgd, DpSgdReport
from drencoder.mechanisms import ClipPoint, GaussianMechanism, RecordSpace
from drencoder.prior import ClientStatistics, StatisticsRelease

log = logging.getLogger(__name__)


class ClientRuntime:
    """A client's work: stage-1 statistics release and one round of local training.

    ``model`` carries the LoRA adapter (``attach_lora``), or is its prefix-cached top
    (:func:`training_model`); ``layout`` is the uplink layout.
    The model's adapter is left at whatever the last call set; callers pass the global
    adapter with every call.
    """

    def __init__(
        self,
        model,
        workload: Workload,
        config: RunConfig,
        *,
        layout: Layout,
        noise_generator: torch.Generator,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.workload = workload
        self.config = config
        self.layout = layout
        self.noise_generator = noise_generator
        self.progress = progress

    def release_statistics(
        self,
        task: Stage1Task,
        *,
        global_state: dict[str, torch.Tensor],
        release: StatisticsRelease | None = None,
        fail_closed: bool = False,
    ) -> tuple[ClientStatistics, float]:
        """Stage 1: the released statistics and the (local-only) unreleased norm.

        ``release`` defaults to the one ``config.stage1`` describes. ``fail_closed`` (a
        deployed client): a failing warm-up is logged here and answered with the released
        (clipped, noised) *zero* statistics vector, as :meth:`train` does for a round.
        """
        try:
            return release_client_statistics(
                self.model,
                global_state,
                self.workload,
                task,
                self.config,
                layout=self.layout,
                noise_generator=self.noise_generator,
                release=release,
                progress=self.progress,
            )
        except Exception as exc:
            if not fail_closed:
                raise
            log.warning(
                "client %s: stage-1 warm-up failed (%s); releasing zero statistics",
                task.client,
                exc,
            )
            n_epochs = self.config.stage1.epochs
            zeros = torch.zeros(2 * len(self.layout.blocks) * n_epochs)
            stats = ClientStatistics.from_vector(zeros, layout=self.layout, n_epochs=n_epochs)
            release = release if release is not None else release_for(self.config)
            return release.release(stats, generator=self.noise_generator), 0.0

    def _train_dp_sgd(
        self,
        task: ClientTask,
        global_state: dict[str, torch.Tensor],
        codec: Codec,
        record: RecordDpSgd,
    ) -> tuple[torch.Tensor, DpSgdReport]:
        """Record-level DP-SGD from ``global_state``: the update (flat, in the uplink
        layout) and what DP-SGD did."""
        examples = len(self.workload.clients[task.client])
        dp = DpSgd.for_client(
            clip_norm=record.clip_norm,
            noise_multiplier=record.noise_multiplier,
            batch_size=record.batch_size,
            examples=examples,
            group=record.group,
        )
        # Which examples a step uses is part of the mechanism (Poisson sampling): drawn from
        # this client's private generator, never from a seed the server knows.
        batches = self.workload.poisson_batches(
            task.client,
            steps=record.steps,
            rate=dp.sample_rate,
            generator=self.noise_generator,
            group=record.group,
        )
        space = codec if record.space == RecordSpace.LATENT.value else None
        return local_update_dp(
            self.model,
            global_state,
            batches,
            dataclasses.replace(self.config.local, steps=record.steps),
            dp,
            layout=self.layout,
            generator=self.noise_generator,
            seed=task.train_seed,
            space=space,
        )

    def train(
        self,
        task: ClientTask,
        *,
        global_state: dict[str, torch.Tensor],
        codec: Codec,
        mechanism: GaussianMechanism | None,
        clip_point: ClipPoint | str | None = None,
        report_clip_bit: bool | None = None,
        diagnostics: bool = True,
        fail_closed: bool = False,
        record: RecordDpSgd | None = None,
    ) -> ClientResult:
        """Stage 2: train from ``global_state``, encode, clip and (locally) noise.

        ``record`` (record-level DP): train with the described DP-SGD instead, over
        batches Poisson-sampled from this client's examples with its own noise generator,
        and send the encoded update without client-level clipping or noise
        (``mechanism`` must then be None).

        ``clip_point`` defaults to ``config.privacy.clip_point``; a deployed client passes
        the one the server described, as it passes the server's ``mechanism``.
        ``report_clip_bit`` (adaptive clipping; default: whether ``privacy.clip_quantile``
        is set) adds the clip indicator to the result; a deployed client passes whether the
        described mechanism asks for it.
        ``fail_closed`` (a deployed client): a failure of local training, or a non-finite
        update, is logged here and answered with the privatised zero update, so that
        whether training succeeded, which can depend on the data, never leaves the client
        outside the mechanism. The simulator keeps the default and raises.
        """
        cfg = self.config
        if record is not None and mechanism is not None:
            raise ConfigError(
                "record-level DP sends the DP-SGD update without client-level clipping or "
                "noise; got both a record DP-SGD description and a client-level mechanism"
            )
        clip_point = cfg.privacy.clip_point if clip_point is None else ClipPoint(clip_point)
        report = None  # record level: what DP-SGD did
        try:
            if record is not None:
                update, report = self._train_dp_sgd(task, global_state, codec, record)
                losses = report.losses
            else:
                batches = self.workload.batches(
                    task.client,
                    steps=cfg.local.steps,
                    batch_size=cfg.data.batch_size,
                    generator=torch.Generator().manual_seed(task.data_seed),
                )
                update, losses = local_update(
                    self.model,
                    global_state,
                    batches,
                    cfg.local,
                    layout=self.layout,
                    seed=task.train_seed,
                    progress=self.progress,
                    desc=f"client {task.client}",
                )
            if not bool(torch.isfinite(update).all()):
                raise FloatingPointError("local training produced a non-finite update")
        except Exception as exc:
            if not fail_closed:
                raise
            # Whether training failed can depend on the data (a diverging loss, an
            # update that stays zero): answering with an error would release that bit
            # outside the mechanism. Send the privatised zero update instead.
            log.warning(
                "client %s: local training failed (%s); sending a zero update", task.client, exc
            )
            update, losses = torch.zeros(self.layout.dim), []
        measured = {}
        if diagnostics:
            measured["train_loss"] = sum(losses) / len(losses) if losses else float("nan")
            measured["update_norm"] = float(update.norm())
            if report is not None:
                # Record level: the share of per-example gradients DP-SGD clipped, and how
                # well their clipped sum kept the direction of the unclipped one.
                for key in ("clipped_fraction", "clip_cosine"):
                    if math.isfinite(value := getattr(report, key)):
                        measured[key] = value
            elif mechanism is not None:
                # Client level: what the mechanism clips and by how much, so that the
                # simulator can compare the clipped mean of the round with the unclipped one.
                x = codec.encode(update) if clip_point is ClipPoint.LATENT else update
                norm = float(x.detach().double().norm())
                scale = min(1.0, mechanism.clip_norm / norm) if norm > 0 else 1.0
                measured["clip_input"] = (x.detach().float(), scale)
            if not isinstance(codec, IdentityCodec):
                r = reconstruction(codec, update.unsqueeze(0))
                measured["reconstruction"] = (r.rel_error, r.cosine)
        message, bit = make_reply(
            update,
            codec=codec,
            mechanism=mechanism,
            clip_point=clip_point,
            generator=self.noise_generator,
        )
        if report_clip_bit is None:
            report_clip_bit = cfg.privacy.clip_quantile is not None and record is None
        return ClientResult(
            client=task.client,
            message=message,
            clip_bit=bit if report_clip_bit else None,
            diagnostics=measured,
        )
