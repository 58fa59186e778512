"""The in-process federated simulator (docs/design.md §8): clients run one after another on one
shared base model, swapping only LoRA state, so memory does not grow with the client count.

A run: evaluate the base model; DR-Encoder stage 1 when the method has it; then rounds of
sample → local training → encode + privatise → aggregate + decode → update, each charged
to the privacy ledger; evaluate; save the adapter, plots and report.

The server side is :class:`~drencoder.federated.orchestration.FederatedServer`; the client
side is :class:`~drencoder.federated.runtime.ClientRuntime`, the same objects the Flower
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

import warnings
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from drencoder.codecs import Codec
from drencoder.errors import ClientDropoutWarning
from drencoder.federated.orchestration import FederatedServer
from drencoder.federated.rounds import GENERATORS, RoundPlan, StatisticsReply, derive_seed
from drencoder.federated.runtime import ClientResult, ClientRuntime
from drencoder.federated.stage1 import Stage1Task
from drencoder.mechanisms import GaussianMechanism

__all__ = ["GENERATORS", "InProcessClients", "Simulator", "derive_seed"]


class InProcessClients:
    """A :class:`~drencoder.federated.orchestration.ClientPool` of simulated clients.

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
