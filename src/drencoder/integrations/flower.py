"""drencoder on Flower's Deployment Runtime: a ServerApp and a ClientApp (DESIGN §7).

The only module that imports ``flwr``. It carries messages; the method is the simulator's:
the ServerApp runs :class:`~drencoder.federated.orchestration.FederatedServer` (sampling,
budget, aggregation, ledger, checkpoints, outputs) with a :class:`FlowerClients` pool, and
the ClientApp runs :class:`~drencoder.federated.runtime.ClientRuntime` on the SuperNode's
own partition.

Messages (``message_type``):

- ``query.hello``: the node answers its ``partition-id`` and ``num-partitions`` (node
  config); the server maps Flower node ids to client indices with it, once per run.
- ``train.stage1`` (DR-Encoder only): the server sends the global adapter, seeds and the
  statistics release it accounts (``mechanism.description``, a
  :class:`~drencoder.federated.descriptions.ReleaseMechanism`); the node answers its clipped,
  noised statistics vector and the release's fingerprint.
- ``train``: the server sends the global adapter, the codec's encoder (never the
  decoder), seeds and the round's mechanism (``mechanism.description``, a
  :class:`~drencoder.federated.descriptions.RoundMechanism`: method, placement, clip point,
  C, σ, relation); the node answers its privatised latent and the mechanism's
  fingerprint.

A node does not trust the server (:mod:`drencoder.federated.policy`): it checks the
described mechanism against its own policy (node config), refuses what breaks it,
charges its own ledger before anything leaves, and privatises with exactly the described
mechanism, not with its own copy of the run config. A reply whose fingerprint is not the
one the server sent was made under another mechanism and stays out of the aggregate.

What the server receives is therefore: noised latents (``local`` placement; clipped but
not noised latents with ``central``), noised stage-1 statistics, fingerprints, each
node's partition id, and who replied. A node that fails answers an error carrying only a
fixed code (:data:`REFUSED_CODE` or :data:`CLIENT_ERROR_CODE`) and a fixed reason:
exception text can depend on the node's data, so it stays in the node's log. The node
draws its noise from the operating system's entropy (or from the node config's
``noise-seed``, for tests only), never from anything the server sent.

A node that answers with an error, with a malformed or mismatched reply, or not within
``round-timeout`` seconds is a dropout: the round goes on with the others. The server
charged every sampled node when it sent the round (write-ahead), so nothing is refunded.
The server's own generators (central noise, Poisson sampling) are seeded from OS entropy
unless ``privacy.reproducible_noise``; the run config, ``seed`` included, reaches every
node, which is why no noise may be derived from it.

Run config (``[tool.flwr.app.config]``): every key is a drencoder config key
(``method``, ``rounds``, ``privacy.placement``, …; Flower keeps nested TOML tables as
dotted keys), except ``out`` (server run directory), ``preset``, ``round-timeout`` and
``connect-timeout`` (seconds). An empty string leaves a key at drencoder's default.
Node config: ``partition-id``, ``num-partitions`` (must equal ``clients``), optional
``model-path`` (this node's copy of the model), ``ledger-path`` (this node's privacy
ledger), the policy keys of :data:`~drencoder.federated.policy.POLICY_KEYS`, and
``noise-seed`` (tests only).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from drencoder.codecs import Codec, rebuild_codec
from drencoder.config import RunConfig, load_config
from drencoder.errors import ClientDropoutWarning, ConfigError, DrencoderError
from drencoder.federated import budget
from drencoder.federated.descriptions import (
    ReleaseMechanism,
    RoundMechanism,
    release_event,
    round_event,
)
from drencoder.federated.methods import spec_for
from drencoder.federated.orchestration import FederatedServer
from drencoder.federated.policy import ClientPolicy, NodeLedger, PolicyRefusal, node_ledger_path
from drencoder.federated.rounds import ClientFailure, RoundPlan, StatisticsReply, derive_seed
from drencoder.federated.runtime import ClientResult, ClientRuntime, ClientTask
from drencoder.federated.stage1 import Stage1Task
from drencoder.federated.workload import build_workload
from drencoder.lora import adapter_layout, attach_lora, get_adapter_state
from drencoder.mechanisms import GaussianMechanism
from drencoder.prior import ClientStatistics

log = logging.getLogger(__name__)

RESERVED = {"out": "", "preset": "default", "round-timeout": 600.0, "connect-timeout": 120.0}
"""Run-config keys that are not drencoder config keys, with their defaults."""

HELLO, STAGE1, TRAIN = "query.hello", "train.stage1", "train"

# Record names and keys on the wire besides tensors and seeds.
MECHANISM = "mechanism"
"""Config record of a task (key :data:`DESCRIPTION`) and of its reply (key
:data:`FINGERPRINT`)."""
DESCRIPTION = "description"
"""Canonical JSON of the mechanism the server accounts the task under."""
FINGERPRINT = "fingerprint"
"""The fingerprint of the description the node made its message under."""

REFUSED_CODE = 1001
"""Error code of a reply by which a node declines a task under its own policy."""
CLIENT_ERROR_CODE = 1002
"""Error code of a reply by which a node reports that its handler failed."""
REFUSED_REASON, CLIENT_ERROR_REASON = "refused", "client-error"
"""The only reasons a node's error replies carry (Flower's own codes are 0..8)."""


# -- configuration ---------------------------------------------------------------------
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def config_from_run_config(run_config: Mapping) -> tuple[RunConfig, dict]:
    """drencoder's :class:`RunConfig` and the reserved settings from a Flower run config.

    Keys other than :data:`RESERVED` become drencoder overrides ``key=value``; values
    that are empty strings are skipped (the key keeps its default).
    """
    settings = {k: run_config.get(k, default) for k, default in RESERVED.items()}
    overrides = [
        f"{k}={_toml_value(v)}"
        for k, v in sorted(run_config.items())
        if k not in RESERVED and v != ""
    ]
    return load_config(preset=str(settings["preset"]), overrides=overrides), settings


# -- tensors <-> records (numpy, never pickle) -------------------------------------------
def to_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(v.detach().cpu().to(torch.float32).contiguous().numpy())
            for k, v in tensors.items()
        }
    )


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def codec_content(codec: Codec) -> dict:
    """The records that carry a codec's encoder to a client (the decoder stays here)."""
    return {
        "codec": ConfigRecord({"name": codec.name, "config": json.dumps(codec.config())}),
        "encoder": to_record(codec.encoder_state_dict()),
    }


def codec_from_content(content: RecordDict) -> Codec:
    meta = content.config_records["codec"]
    return rebuild_codec(
        str(meta["name"]),
        json.loads(str(meta["config"])),
        from_record(content.array_records["encoder"]),
    )


# -- the ClientApp -----------------------------------------------------------------------
client_app = ClientApp()
_RUNTIMES: dict[tuple[int, int], ClientRuntime] = {}


def _partition(node_config: Mapping) -> tuple[int, int]:
    try:
        return int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as exc:
        raise ConfigError(
            f"the SuperNode's node config lacks {exc}; start it with "
            '--node-config "partition-id=0 num-partitions=2" (one partition per site)'
        ) from None


def _runtime(context: Context) -> ClientRuntime:
    """This node's client runtime: model, LoRA, layout and its own partition (cached)."""
    key = (context.run_id, context.node_id)
    if key in _RUNTIMES:
        return _RUNTIMES[key]
    from drencoder.models import load_model

    config, _ = config_from_run_config(context.run_config)
    pid, n = _partition(context.node_config)
    if n != config.clients or not 0 <= pid < n:
        raise ConfigError(
            f"node config partition-id={pid} num-partitions={n} does not fit the run's "
            f"clients={config.clients}: set num-partitions={config.clients} and a "
            f"partition-id in 0..{config.clients - 1}"
        )
    name = str(context.node_config.get("model-path", "")) or config.model.name
    base, tokenizer = load_model(name, device=config.model.device, progress=False)
    model = attach_lora(
        base, config.lora, seed=derive_seed(config.seed, "lora"), device=config.model.device
    )
    runtime = ClientRuntime(
        model,
        build_workload(config, tokenizer),
        config,
        layout=adapter_layout(model, sent=spec_for(config.method).sent),
        noise_generator=torch.Generator(),
    )
    _RUNTIMES[key] = runtime
    return runtime


def _noise_generator(context: Context, what: str) -> torch.Generator:
    """Fresh client-side noise: OS entropy, or ``noise-seed`` from the node config (tests)."""
    seed = context.node_config.get("noise-seed")
    if seed is None or seed == "":
        return torch.Generator().manual_seed(secrets.randbits(63))
    # Mixed with the run id, so that two runs (e.g. a resumed one) never share noise.
    return torch.Generator().manual_seed(
        derive_seed(int(seed), f"node-noise/{context.run_id}/{what}")
    )


def _global_state(runtime: ClientRuntime, content: RecordDict) -> dict[str, torch.Tensor]:
    state = from_record(content.array_records["adapter"])
    mine = get_adapter_state(runtime.model)
    if state.keys() != mine.keys():
        raise ConfigError(
            f"the server's adapter has keys {sorted(state)[:3]}…, this node's model "
            f"{sorted(mine)[:3]}…: server and nodes must load the same model"
        )
    device = next(iter(mine.values())).device
    return {k: v.to(device) for k, v in state.items()}


def _guarded(handler: Callable[[Message, Context], Message]):
    """Any failure of ``handler`` becomes an error reply with a fixed code and reason.

    Flower would otherwise send the exception's text to the server, and that text can
    depend on this node's data (a value, a path, a token). The text and traceback go to
    this node's log only.
    """

    @functools.wraps(handler)
    def answer(message: Message, context: Context) -> Message:
        kind = message.metadata.message_type
        try:
            return handler(message, context)
        except PolicyRefusal as exc:
            log.warning("drencoder: this node refused a %s task: %s", kind, exc)
            return Message(Error(REFUSED_CODE, REFUSED_REASON), reply_to=message)
        except Exception:
            log.exception("drencoder: a %s task failed on this node", kind)
            return Message(Error(CLIENT_ERROR_CODE, CLIENT_ERROR_REASON), reply_to=message)

    return answer


def _description(content: RecordDict) -> str:
    try:
        return str(content.config_records[MECHANISM][DESCRIPTION])
    except KeyError:
        raise ConfigError(
            f"the task carries no {MECHANISM}.{DESCRIPTION}: the server runs another "
            "drencoder version; run the same version on server and nodes"
        ) from None


def _reply(message: Message, records: Mapping[str, ArrayRecord], fingerprint: str) -> Message:
    """The whole of a reply: the released tensor and the fingerprint it was made under."""
    content = RecordDict({**records, MECHANISM: ConfigRecord({FINGERPRINT: fingerprint})})
    return Message(content, reply_to=message)


def _check_layout(runtime: ClientRuntime, mechanism: RoundMechanism) -> None:
    """The described method must send the blocks this node's layout was built for."""
    sent, mine = spec_for(mechanism.method).sent, spec_for(runtime.config.method).sent
    if sent != mine:
        raise PolicyRefusal(
            "method",
            f"the task's method {mechanism.method!r} sends {sent.value} blocks, this node's "
            f"run config ({runtime.config.method.value!r}) {mine.value}: the latent would not "
            "match the server's codec",
        )


@client_app.query("hello")
@_guarded
def hello(message: Message, context: Context) -> Message:
    pid, n = _partition(context.node_config)
    # A misconfigured policy or ledger fails here, before the run starts, not mid-run.
    ClientPolicy.from_node_config(context.node_config)
    node_ledger_path(context.node_config, pid)
    reply = ConfigRecord({"partition-id": pid, "num-partitions": n})
    return Message(RecordDict({"hello": reply}), reply_to=message)


@client_app.train("stage1")
@_guarded
def stage1(message: Message, context: Context) -> Message:
    content = message.content
    release = ReleaseMechanism.from_json(_description(content))
    policy = ClientPolicy.from_node_config(context.node_config)
    policy.check_release(release)
    pid, _ = _partition(context.node_config)
    ledger = NodeLedger(node_ledger_path(context.node_config, pid), delta=policy.delta)
    event = release_event(release)
    ledger.check(event, policy.max_epsilon)  # refuse before the warm-up, not after it
    runtime = _runtime(context)
    task = content.config_records["task"]
    runtime.noise_generator = _noise_generator(context, "stage1")
    stats, _norm = runtime.release_statistics(  # the norm is unreleased: it stays here
        Stage1Task(
            client=pid, data_seed=int(task["data-seed"]), train_seed=int(task["train-seed"])
        ),
        global_state=_global_state(runtime, content),
        release=release.to_release(),
        fail_closed=True,
    )
    fingerprint = release.fingerprint()
    ledger.charge(
        event,
        kind="statistics",
        cap=policy.max_epsilon,
        label=f"run {context.run_id} stage-1 statistics: enabled={release.enabled}, "
        f"sigma_s={release.noise_multiplier:g}, C_s={release.clip_norm:g} ({fingerprint})",
    )
    return _reply(message, {"statistics": to_record({"vector": stats.to_vector()})}, fingerprint)


@client_app.train()
@_guarded
def train(message: Message, context: Context) -> Message:
    content = message.content
    mechanism = RoundMechanism.from_json(_description(content))
    policy = ClientPolicy.from_node_config(context.node_config)
    policy.check_round(mechanism)
    pid, _ = _partition(context.node_config)
    ledger = NodeLedger(node_ledger_path(context.node_config, pid), delta=policy.delta)
    event = round_event(mechanism, trust_aggregator=policy.trust_aggregator)
    ledger.check(event, policy.max_epsilon)  # refuse before training, not after it
    runtime = _runtime(context)
    _check_layout(runtime, mechanism)
    task = content.config_records["task"]
    t = int(task["round"])
    runtime.noise_generator = _noise_generator(context, f"round/{t}")
    # The described mechanism, never this node's own copy of the run config: the server
    # accounted the former, and the node's ledger charges it.
    result = runtime.train(
        ClientTask(
            round=t,
            client=pid,
            data_seed=int(task["data-seed"]),
            train_seed=int(task["train-seed"]),
        ),
        global_state=_global_state(runtime, content),
        codec=codec_from_content(content),
        mechanism=mechanism.gaussian,
        clip_point=mechanism.clip_point,
        diagnostics=False,
        fail_closed=True,
    )
    fingerprint = mechanism.fingerprint()
    clip = "unclipped" if mechanism.clip_norm is None else f"C={mechanism.clip_norm:g}"
    ledger.charge(
        event,
        kind="round",
        round=t,
        cap=policy.max_epsilon,
        label=f"run {context.run_id} round {t}: {mechanism.method}, sigma="
        f"{mechanism.noise_multiplier:g}, {clip}, {mechanism.placement} noise, clip "
        f"{mechanism.clip_point}, server relation {mechanism.relation} ({fingerprint})",
    )
    # The privatised latent is the only thing computed from this node's data that leaves it.
    return _reply(message, {"update": to_record({"latent": result.message})}, fingerprint)


# -- the ServerApp -----------------------------------------------------------------------
def round_mechanism(config: RunConfig, mechanism: GaussianMechanism | None) -> RoundMechanism:
    """The description of a round the server sends: its own config and mechanism."""
    p = config.privacy
    return RoundMechanism(
        method=config.method.value,
        placement=(mechanism.placement if mechanism is not None else p.placement).value,
        clip_point=p.clip_point.value,
        clip_norm=mechanism.clip_norm if mechanism is not None else None,
        noise_multiplier=mechanism.noise_multiplier if mechanism is not None else 0.0,
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
    try:
        content = reply.content
        echoed = content.config_records[MECHANISM]
        if set(echoed) != {FINGERPRINT}:
            return ClientFailure("malformed-reply")
        if echoed[FINGERPRINT] != fingerprint:
            return ClientFailure("mechanism-mismatch")
        if (
            set(content.array_records) != {record}
            or set(content.config_records) != {MECHANISM}
            or len(content.metric_records) != 0
            or set(content.array_records[record]) != {key}
        ):
            return ClientFailure("malformed-reply")
        return from_record(content.array_records[record])[key]
    except (KeyError, TypeError, ValueError):
        return ClientFailure("malformed-reply")


class FlowerClients:
    """A :class:`~drencoder.federated.orchestration.ClientPool` of Flower SuperNodes."""

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
        described = round_mechanism(self.server.config, mechanism)
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
            latent = reply_tensor(reply, record="update", key="latent", fingerprint=fingerprint)
            if isinstance(latent, ClientFailure):
                out[client] = latent
            else:
                out[client] = ClientResult(client=client, message=latent)
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
