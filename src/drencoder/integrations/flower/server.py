"""The ServerApp: :class:`~drencoder.federated.server.orchestration.FederatedServer` with a pool
of Flower SuperNodes (see the package docstring for the protocol)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from drencoder.codecs import Codec
from drencoder.config import RunConfig
from drencoder.errors import ClientDropoutWarning, ConfigError, DrencoderError
from drencoder.federated.descriptions import ReleaseMechanism, RoundMechanism
from drencoder.federated.protocol import (
    ClientFailure,
    ClientResult,
    RoundPlan,
    Stage1Task,
    StatisticsReply,
)
from drencoder.federated.record import RecordDpSgd
from drencoder.federated.server import budget
from drencoder.federated.server.orchestration import FederatedServer
from drencoder.integrations.flower.records import (
    CLIP_BIT,
    DESCRIPTION,
    FINGERPRINT,
    HELLO,
    LATENT,
    MECHANISM,
    RECORD_EPSILON,
    REFUSED_CODE,
    STAGE1,
    TRAIN,
    codec_content,
    config_from_run_config,
    from_record,
    to_record,
)
from drencoder.mechanisms import GaussianMechanism, NoisePlacement, PrivacyUnit
from drencoder.prior import ClientStatistics

log = logging.getLogger(__name__)


# -- the ServerApp -----------------------------------------------------------------------
def round_mechanism(
    config: RunConfig,
    mechanism: GaussianMechanism | None,
    *,
    count_noise: float | None = None,
    record: RecordDpSgd | None = None,
) -> RoundMechanism:
    """The description of a round the server sends: its own config and mechanism (with
    adaptive clipping, the round's clip norm and the count noise σ_b; with record-level
    DP, the DP-SGD every participant runs)."""
    p = config.privacy
    if record is not None:
        return RoundMechanism(
            method=config.method.value,
            placement=NoisePlacement.LOCAL.value,
            clip_point=p.clip_point.value,
            clip_norm=None,
            noise_multiplier=0.0,
            count_noise=None,
            relation=budget.relation(config).value,
            unit=PrivacyUnit.RECORD.value,
            record=record.to_json(),
        )
    return RoundMechanism(
        method=config.method.value,
        placement=(mechanism.placement if mechanism is not None else p.placement).value,
        clip_point=p.clip_point.value,
        clip_norm=mechanism.clip_norm if mechanism is not None else None,
        noise_multiplier=mechanism.noise_multiplier if mechanism is not None else 0.0,
        count_noise=count_noise if mechanism is not None else None,
        relation=budget.relation(config).value,
    )


def error_failure(error: Error) -> ClientFailure:
    """The fixed failure of an error reply; its reason is never read (it may be Flower's
    text of a node's exception)."""
    if error.code == REFUSED_CODE:
        return ClientFailure("refused", f"error code {error.code}")
    return ClientFailure("client-error", f"error code {error.code}")


def reply_tensor(
    reply: Message, *, record: str, key: str, fingerprint: str
) -> torch.Tensor | ClientFailure:
    """The one tensor a reply may carry, or why the reply is unusable.

    A reply holds exactly ``{record: {key: tensor}}`` and ``{mechanism: {fingerprint}}``:
    anything else (a metric, a loss, a second tensor) is ``malformed-reply``, so nothing
    beyond the privatised message can reach the server's records unnoticed. A fingerprint
    other than ``fingerprint`` is ``mechanism-mismatch``: the message was made under
    another mechanism than the one charged.
    """
    tensors = reply_tensors(reply, record=record, keys=(key,), fingerprint=fingerprint)
    return tensors if isinstance(tensors, ClientFailure) else tensors[key]


def reply_tensors(
    reply: Message, *, record: str, keys: tuple[str, ...], fingerprint: str
) -> dict[str, torch.Tensor] | ClientFailure:
    """:func:`reply_tensor` for a reply that carries exactly the tensors ``keys``."""
    try:
        content = reply.content
        echoed = content.config_records[MECHANISM]
        if set(echoed) - {RECORD_EPSILON} != {FINGERPRINT}:
            return ClientFailure("malformed-reply")
        if echoed[FINGERPRINT] != fingerprint:
            return ClientFailure("mechanism-mismatch")
        if (
            set(content.array_records) != {record}
            or set(content.config_records) != {MECHANISM}
            or len(content.metric_records) != 0
            or set(content.array_records[record]) != set(keys)
        ):
            return ClientFailure("malformed-reply")
        return from_record(content.array_records[record])
    except (KeyError, TypeError, ValueError):
        return ClientFailure("malformed-reply")


def declared_epsilon(reply: Message) -> float | None:
    """The per-record ε a node declares with a record-level reply (None if it declares
    none or something that is not a finite number >= 0). The server reports it; its own
    ledger charges what it planned."""
    try:
        value = reply.content.config_records[MECHANISM][RECORD_EPSILON]
    except KeyError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


class FlowerClients:
    """A :class:`~drencoder.federated.server.orchestration.ClientPool` of Flower SuperNodes."""

    def __init__(
        self,
        grid: Grid,
        server: FederatedServer,
        *,
        round_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.grid = grid
        self.server = server
        self.round_timeout = float(round_timeout)
        self.nodes = self._hello(float(connect_timeout))

    def _hello(self, timeout: float) -> dict[int, int]:
        """client index -> node id, from each node's ``partition-id``."""
        want, deadline = self.server.config.clients, time.monotonic() + timeout
        ids = list(self.grid.get_node_ids())
        while len(ids) < want and time.monotonic() < deadline:
            time.sleep(1.0)
            ids = list(self.grid.get_node_ids())
        messages = [Message(RecordDict(), dst_node_id=n, message_type=HELLO) for n in ids]
        nodes: dict[int, int] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():  # the code only: a reason can carry a node's exception
                log.warning(
                    "node %s answered hello with error code %s",
                    reply.metadata.src_node_id,
                    reply.error.code,
                )
                continue
            hello = reply.content.config_records["hello"]
            pid, n = int(hello["partition-id"]), int(hello["num-partitions"])
            if n != want:
                raise ConfigError(
                    f"node {reply.metadata.src_node_id} has num-partitions={n}, the run has "
                    f"clients={want}: start every SuperNode with num-partitions={want}"
                )
            if pid in nodes:
                raise ConfigError(
                    f"nodes {nodes[pid]} and {reply.metadata.src_node_id} both hold "
                    f"partition-id={pid}: give each SuperNode its own partition-id"
                )
            nodes[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(want)) - set(nodes))
        if missing:
            warnings.warn(
                f"no SuperNode holds partitions {missing} after {timeout:g} s; those clients "
                "will count as dropouts whenever they are sampled",
                ClientDropoutWarning,
                stacklevel=2,
            )
        log.info("drencoder: client index -> Flower node id %s", nodes)
        return nodes

    def _exchange(
        self, contents: Mapping[int, RecordDict], message_type: str, group: str
    ) -> dict[int, Message | BaseException]:
        out: dict[int, Message | BaseException] = {}
        messages = []
        for client, content in contents.items():
            if client not in self.nodes:
                out[client] = ClientFailure("no-node")
                continue
            messages.append(
                Message(
                    content,
                    dst_node_id=self.nodes[client],
                    message_type=message_type,
                    group_id=group,
                )
            )
        by_node = {n: c for c, n in self.nodes.items()}
        for reply in self.grid.send_and_receive(messages, timeout=self.round_timeout):
            client = by_node.get(reply.metadata.src_node_id)
            if client is None:
                continue
            if reply.has_error():
                out[client] = error_failure(reply.error)
            else:
                out[client] = reply
        return out

    def release_statistics(
        self, tasks: Sequence[Stage1Task], *, global_state: dict[str, torch.Tensor]
    ) -> dict[int, StatisticsReply | BaseException]:
        server, epochs = self.server, self.server.config.stage1.epochs
        release = ReleaseMechanism.from_release(server.release)
        adapter = to_record(global_state)
        described = ConfigRecord({DESCRIPTION: release.canonical()})
        contents = {
            t.client: RecordDict(
                {
                    "adapter": adapter,
                    "task": ConfigRecord({"data-seed": t.data_seed, "train-seed": t.train_seed}),
                    MECHANISM: described,
                }
            )
            for t in tasks
        }
        out: dict[int, StatisticsReply | BaseException] = {}
        fingerprint = release.fingerprint()
        for client, reply in self._exchange(contents, STAGE1, "stage1").items():
            if isinstance(reply, BaseException):
                out[client] = reply
                continue
            vector = reply_tensor(reply, record="statistics", key="vector", fingerprint=fingerprint)
            if isinstance(vector, ClientFailure):
                out[client] = vector
                continue
            try:
                stats = ClientStatistics.from_vector(
                    vector,
                    layout=server.layout,
                    n_epochs=epochs,
                    std_floor=server.release.std_floor,
                )
                out[client] = (stats, None)
            except DrencoderError:
                out[client] = ClientFailure("malformed-reply")
        return out

    def train(
        self,
        plan: RoundPlan,
        *,
        global_state: dict[str, torch.Tensor],
        codec: Codec,
        mechanism: GaussianMechanism | None,
    ) -> dict[int, ClientResult | BaseException]:
        described = round_mechanism(
            self.server.config, mechanism, count_noise=self.server.count_noise, record=plan.record
        )
        adaptive = described.count_noise is not None
        keys = (LATENT, CLIP_BIT) if adaptive else (LATENT,)
        adapter, encoder = to_record(global_state), codec_content(codec)
        record = ConfigRecord({DESCRIPTION: described.canonical()})
        contents = {}
        for t in plan.tasks:
            task = {"round": t.round, "data-seed": t.data_seed, "train-seed": t.train_seed}
            contents[t.client] = RecordDict(
                {"adapter": adapter, "task": ConfigRecord(task), MECHANISM: record, **encoder}
            )
        out: dict[int, ClientResult | BaseException] = {}
        fingerprint = described.fingerprint()
        for client, reply in self._exchange(contents, TRAIN, f"round-{plan.round}").items():
            if isinstance(reply, BaseException):
                out[client] = reply
                continue
            tensors = reply_tensors(reply, record="update", keys=keys, fingerprint=fingerprint)
            if isinstance(tensors, ClientFailure):
                out[client] = tensors
                continue
            bit = None
            if adaptive:
                # One number; whether it is a bit (0 or 1) the server checks with the
                # message (bad-clip-bit), since the reply was made and is charged.
                if tensors[CLIP_BIT].numel() != 1:
                    out[client] = ClientFailure("malformed-reply")
                    continue
                bit = float(tensors[CLIP_BIT].reshape(-1)[0])
            out[client] = ClientResult(
                client=client,
                message=tensors[LATENT],
                clip_bit=bit,
                declared_epsilon=declared_epsilon(reply) if plan.record is not None else None,
            )
        return out


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config, settings = config_from_run_config(context.run_config)
    out = str(settings["out"])
    if not out:
        raise ConfigError(
            'run config "out" is empty: set the server\'s run directory, e.g. '
            "flwr run . local --run-config 'out=\"runs/flower\"'"
        )
    if (Path(out) / "checkpoints" / "latest.json").exists():
        server = FederatedServer.resume(out, progress=False)
        log.info("drencoder: resuming %s from round %d", out, server.round)
    else:
        server = FederatedServer(config, out, progress=False)
    server.clients = FlowerClients(
        grid,
        server,
        round_timeout=float(settings["round-timeout"]),
        connect_timeout=float(settings["connect-timeout"]),
    )
    summary = server.run()
    eps = summary["privacy"].get("epsilon")
    log.info(
        "drencoder: %d rounds done, epsilon %s; outputs in %s", summary["rounds_done"], eps, out
    )
