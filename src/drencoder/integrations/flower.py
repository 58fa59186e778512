"""drencoder on Flower's Deployment Runtime: a ServerApp and a ClientApp (DESIGN §7).

The only module that imports ``flwr``. It carries messages; the method is the simulator's:
the ServerApp runs :class:`~drencoder.federated.orchestration.FederatedServer` (sampling,
budget, aggregation, ledger, checkpoints, outputs) with a :class:`FlowerClients` pool, and
the ClientApp runs :class:`~drencoder.federated.runtime.ClientRuntime` on the SuperNode's
own partition.

Messages (``message_type``):

- ``query.hello``: the node answers its ``partition-id`` and ``num-partitions`` (node
  config); the server maps Flower node ids to client indices with it, once per run.
- ``train.stage1`` (DR-Encoder only): the server sends the global adapter and seeds; the
  node answers its clipped, noised statistics vector.
- ``train``: the server sends the global adapter, the codec's encoder (never the decoder),
  seeds and σ; the node answers its privatised latent and its mean local loss.

What the server receives is therefore: noised latents (``local`` placement; clipped but
not noised latents with ``central``), noised stage-1 statistics, each node's partition id,
the mean local loss per round (a non-private scalar), and who replied. The node draws its
noise from the operating system's entropy (or from the node config's ``noise-seed``, for
tests only), never from anything the server sent.

A node that raises, answers with an error or does not answer within ``round-timeout``
seconds is a dropout: the round goes on with the others and, with ``local`` noise, the
ledger charges only the clients whose message arrived.

Run config (``[tool.flwr.app.config]``): every key is a drencoder config key
(``method``, ``rounds``, ``privacy.placement``, …; Flower keeps nested TOML tables as
dotted keys), except ``out`` (server run directory), ``preset``, ``round-timeout`` and
``connect-timeout`` (seconds). An empty string leaves a key at drencoder's default.
Node config: ``partition-id``, ``num-partitions`` (must equal ``clients``), optional
``model-path`` (this node's copy of the model) and ``noise-seed`` (tests only).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from drencoder.codecs import Codec, rebuild_codec
from drencoder.config import RunConfig, load_config
from drencoder.errors import ClientDropoutWarning, ConfigError, DrencoderError
from drencoder.federated.methods import spec_for
from drencoder.federated.orchestration import (
    FederatedServer,
)
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
    return torch.Generator().manual_seed(derive_seed(int(seed), f"node-noise/{what}"))


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


@client_app.query("hello")
def hello(message: Message, context: Context) -> Message:
    pid, n = _partition(context.node_config)
    reply = ConfigRecord({"partition-id": pid, "num-partitions": n})
    return Message(RecordDict({"hello": reply}), reply_to=message)


@client_app.train("stage1")
def stage1(message: Message, context: Context) -> Message:
    runtime = _runtime(context)
    task = message.content.config_records["task"]
    pid, _ = _partition(context.node_config)
    runtime.noise_generator = _noise_generator(context, "stage1")
    stats, _norm = runtime.release_statistics(  # the norm is unreleased: it stays here
        Stage1Task(
            client=pid, data_seed=int(task["data-seed"]), train_seed=int(task["train-seed"])
        ),
        global_state=_global_state(runtime, message.content),
    )
    content = RecordDict({"statistics": to_record({"vector": stats.to_vector()})})
    return Message(content, reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    runtime = _runtime(context)
    content = message.content
    task = content.config_records["task"]
    pid, _ = _partition(context.node_config)
    t = int(task["round"])
    config = runtime.config
    mechanism = None
    if "noise-multiplier" in task:
        p = config.privacy
        mechanism = GaussianMechanism(
            clip_norm=p.clip_norm,
            noise_multiplier=float(task["noise-multiplier"]),
            placement=p.placement,
        )
    runtime.noise_generator = _noise_generator(context, f"round/{t}")
    result = runtime.train(
        ClientTask(
            round=t,
            client=pid,
            data_seed=int(task["data-seed"]),
            train_seed=int(task["train-seed"]),
        ),
        global_state=_global_state(runtime, content),
        codec=codec_from_content(content),
        mechanism=mechanism,
        diagnostics=False,
    )
    # The privatised latent is the only thing computed from this node's data that leaves it.
    reply = RecordDict({"update": to_record({"latent": result.message})})
    return Message(reply, reply_to=message)


# -- the ServerApp -----------------------------------------------------------------------
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
            if reply.has_error():
                log.warning(
                    "node %s answered hello with an error: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
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
                # The reason text can carry a client's exception message: keep the code only.
                out[client] = ClientFailure("client-error", f"flower error code {reply.error.code}")
            else:
                out[client] = reply
        return out

    def release_statistics(
        self, tasks: Sequence[Stage1Task], *, global_state: dict[str, torch.Tensor]
    ) -> dict[int, StatisticsReply | BaseException]:
        adapter = to_record(global_state)
        contents = {
            t.client: RecordDict(
                {
                    "adapter": adapter,
                    "task": ConfigRecord({"data-seed": t.data_seed, "train-seed": t.train_seed}),
                }
            )
            for t in tasks
        }
        out: dict[int, StatisticsReply | BaseException] = {}
        server, epochs = self.server, self.server.config.stage1.epochs
        for client, reply in self._exchange(contents, STAGE1, "stage1").items():
            if isinstance(reply, BaseException):
                out[client] = reply
                continue
            try:
                vector = from_record(reply.content.array_records["statistics"])["vector"]
                stats = ClientStatistics.from_vector(
                    vector,
                    layout=server.layout,
                    n_epochs=epochs,
                    std_floor=server.release.std_floor,
                )
                out[client] = (stats, None)
            except (KeyError, DrencoderError):
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
        adapter, encoder = to_record(global_state), codec_content(codec)
        contents = {}
        for t in plan.tasks:
            task = {"round": t.round, "data-seed": t.data_seed, "train-seed": t.train_seed}
            if mechanism is not None:
                task["noise-multiplier"] = mechanism.noise_multiplier
            contents[t.client] = RecordDict(
                {"adapter": adapter, "task": ConfigRecord(task), **encoder}
            )
        out: dict[int, ClientResult | BaseException] = {}
        for client, reply in self._exchange(contents, TRAIN, f"round-{plan.round}").items():
            if isinstance(reply, BaseException):
                out[client] = reply
                continue
            try:
                latent = from_record(reply.content.array_records["update"])["latent"]
                out[client] = ClientResult(client=client, message=latent)
            except KeyError:
                out[client] = ClientFailure("malformed-reply")
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
