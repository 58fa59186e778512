"""The in-process federated simulator (docs/design.md §8): clients run one after another on one
shared base model, swapping only LoRA state, so memory does not grow with the client count.

A run: evaluate the base model; DR-Encoder stage 1 when the method has it; then rounds of
sample → local training → encode + privatise → aggregate + decode → update, each charged
to the privacy ledger; evaluate; save the adapter, plots and report.

The server side is :class:`~drencoder.federated.server.orchestration.FederatedServer`; the client
side is :class:`~drencoder.federated.client.runtime.ClientRuntime`, the same objects the Flower
apps run. The simulator only carries the messages between them, in memory. Clients draw
their privacy noise from the run's ``noise`` generator, so a run is a function of its
checkpointed state and a resumed run continues exactly.

Faults: an exception raised inside one client's work (including from the hook's
``"client_work"`` event, which tests use to inject failures) makes that client a dropout
for the round; the round completes with the others. The round was charged to every
sampled client when it was sent (see ``FederatedServer.charge_round``), so a dropout is
never refunded. Its error is recorded as the fixed code ``client-error``; the text is shown
only in a local warning. An ``AssertionError`` (a broken internal invariant) is
raised at once, and so is the first error when every sampled client of a round fails: in
one process that is a bug, not a network. An exception from any other hook
event (``"client_done"``, ``"round_done"``) stops the run, as a crash would.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from drencoder.codecs import Codec
from drencoder.config import Architecture, RunConfig
from drencoder.errors import ClientDropoutWarning, ConfigError
from drencoder.federated.client.runtime import ClientRuntime
from drencoder.federated.client.stage1 import release_client_statistics
from drencoder.federated.protocol import ClientResult, RoundPlan, Stage1Task, StatisticsReply
from drencoder.federated.server.orchestration import FederatedServer
from drencoder.federated.server.stage1 import (
    Stage1Result,
    conv_stages_for,
    model_device,
    stage1_tasks,
    train_codec,
)
from drencoder.federated.workload import Workload
from drencoder.lora import Layout
from drencoder.mechanisms import GaussianMechanism

__all__ = ["InProcessClients", "Simulator", "run_stage1"]


class InProcessClients:
    """A :class:`~drencoder.federated.server.orchestration.ClientPool` of simulated clients.

    One :class:`ClientRuntime` over the server's own model and workload serves every
    client in turn; noise comes from the server's ``noise`` generator.
    """

    def __init__(self, server: FederatedServer) -> None:
        self.server = server
        self.runtime = ClientRuntime(
            server.lm,
            server.workload,
            server.config,
            layout=server.layout,
            noise_generator=server.generators["noise"],
            progress=server.progress,
        )

    def release_statistics(
        self, tasks: Sequence[Stage1Task], *, global_state: dict[str, torch.Tensor]
    ) -> Mapping[int, StatisticsReply | BaseException]:
        bar = tqdm(tasks, desc="stage 1 warm-up", unit="client", disable=not self.server.progress)
        return {
            t.client: self.runtime.release_statistics(t, global_state=global_state) for t in bar
        }

    def train(
        self,
        plan: RoundPlan,
        *,
        global_state: dict[str, torch.Tensor],
        codec: Codec,
        mechanism: GaussianMechanism | None,
    ) -> Mapping[int, ClientResult | BaseException]:
        hook, replies = self.server.hook, {}
        for task in tqdm(
            plan.tasks,
            desc=f"round {plan.round} clients",
            leave=False,
            disable=not self.server.progress,
        ):
            try:
                hook("client_work", round=plan.round, client=task.client)
                replies[task.client] = self.runtime.train(
                    task,
                    global_state=global_state,
                    codec=codec,
                    mechanism=mechanism,
                    record=plan.record,
                )
            except AssertionError:  # a broken invariant is a bug, never a dropout
                raise
            except Exception as exc:  # a failing client is a dropout, see the module doc
                replies[task.client] = exc
                # The text stays here: metrics and reports get only a fixed code, since a
                # real server never sees a client's exception (it can carry its data).
                warnings.warn(
                    f"simulated client {task.client} failed in round {plan.round}: "
                    f"{type(exc).__name__}: {exc} (recorded as 'client-error')",
                    ClientDropoutWarning,
                    stacklevel=2,
                )
            hook("client_done", round=plan.round, client=task.client)
        errors = [r for r in replies.values() if isinstance(r, BaseException)]
        if errors and len(errors) == len(replies):
            raise RuntimeError(
                f"every sampled client of round {plan.round} failed; the first error: "
                f"{type(errors[0]).__name__}: {errors[0]}"
            ) from errors[0]
        return replies


class Simulator(FederatedServer):
    """Runs (or resumes) one federated fine-tuning job into a run directory, in process.

    ``hook(event, **info)`` is called at ``"client_work"`` (inside a client's work: an
    exception there is that client failing), ``"client_done"`` and ``"round_done"``.
    """

    def __init__(self, config, run_dir, **kwargs) -> None:
        super().__init__(config, run_dir, **kwargs)
        self.clients = InProcessClients(self)


def run_stage1(
    model,
    global_state: dict[str, torch.Tensor],
    workload: Workload,
    config: RunConfig,
    *,
    layout: Layout,
    generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
    progress: bool = True,
) -> Stage1Result:
    """Run stage 1 in one process: every client's release, then the auto-encoder.

    The composition of :func:`~drencoder.federated.server.stage1.stage1_tasks` (seeds from
    ``generator``), :func:`~drencoder.federated.client.stage1.release_client_statistics` for
    every client (release noise from ``noise_generator``, default ``generator``) and
    :func:`~drencoder.federated.server.stage1.train_codec` (``generator``).
    ``model`` carries the LoRA adapter (``attach_lora``); it is left at ``global_state``.
    ``layout`` is the uplink layout (``adapter_layout(model, sent=config.lora.sent)``).

    ``report`` keys: ``clients``, ``epochs``, ``warmup_steps``, ``batch_size``,
    ``release`` (settings and ``noise_std``), ``pooling``, ``statistics_norms`` and
    ``clipped_clients`` (unreleased, simulator diagnostic), ``autoencoder`` (name,
    dimensions, architecture settings), ``training`` (``TrainReport.to_dict()`` without
    its time), ``prior_check`` (relative error and cosine on fresh prior samples),
    ``training_seconds`` and ``seconds`` (the whole stage). Every key but the two times is
    a deterministic function of (config, generator states).
    """
    from tqdm.auto import tqdm

    if not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a RunConfig, got {type(config).__name__}")
    if config.codec.architecture is Architecture.CONV:
        conv_stages_for(config.codec.compression_ratio)  # fail before the warm-up, not after
    start = time.perf_counter()
    noise = generator if noise_generator is None else noise_generator
    released, norms = [], []
    tasks = stage1_tasks(len(workload.clients), generator=generator)
    for task in tqdm(tasks, desc="stage 1 warm-up", unit="client", disable=not progress):
        stats, norm = release_client_statistics(
            model, global_state, workload, task, config, layout=layout, noise_generator=noise
        )
        released.append(stats)
        norms.append(norm)
    result = train_codec(
        released,
        config,
        generator=generator,
        device=model_device(model),
        statistics_norms=norms,
        progress=progress,
    )
    result.report["seconds"] = time.perf_counter() - start
    return result
