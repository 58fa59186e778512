"""The ClientApp: one SuperNode's side (see the package docstring for the protocol).

A node does not trust the server (:mod:`drencoder.federated.client.policy`): it checks the
described mechanism against its own policy, charges its own ledger before anything
leaves, privatises with exactly the described mechanism, and answers failures with fixed
codes only.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from drencoder.config.methods import spec_for
from drencoder.errors import ConfigError
from drencoder.federated.client.policy import (
    ClientPolicy,
    NodeLedger,
    PolicyRefusal,
    node_ledger_path,
    record_ledger_path,
)
from drencoder.federated.client.runtime import ClientRuntime
from drencoder.federated.descriptions import (
    ReleaseMechanism,
    RoundMechanism,
    record_event,
    release_event,
    round_event,
)
from drencoder.federated.protocol import ClientTask, Stage1Task
from drencoder.federated.seeds import derive_seed
from drencoder.federated.workload import build_workload, training_model
from drencoder.integrations.flower.records import (
    CLIENT_ERROR_CODE,
    CLIENT_ERROR_REASON,
    CLIP_BIT,
    DESCRIPTION,
    FINGERPRINT,
    LATENT,
    MECHANISM,
    RECORD_EPSILON,
    REFUSED_CODE,
    REFUSED_REASON,
    codec_from_content,
    config_from_run_config,
    from_record,
    to_record,
)
from drencoder.lora import adapter_layout, attach_lora, get_adapter_state

log = logging.getLogger(__name__)

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
        training_model(model, config),
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


def _reply(
    message: Message,
    records: Mapping[str, ArrayRecord],
    fingerprint: str,
    *,
    record_epsilon: float | None = None,
) -> Message:
    """The whole of a reply: the released tensor and the fingerprint it was made under
    (and, in a record-level round, the ε this node's record ledger now stands at)."""
    meta = {FINGERPRINT: fingerprint}
    if record_epsilon is not None:
        meta[RECORD_EPSILON] = float(record_epsilon)
    content = RecordDict({**records, MECHANISM: ConfigRecord(meta)})
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
    path = node_ledger_path(context.node_config, pid)
    ledger = NodeLedger(path, delta=policy.delta)
    event = round_event(mechanism, trust_aggregator=policy.trust_aggregator)
    ledger.check(event, policy.max_epsilon)  # refuse before training, not after it
    runtime = _runtime(context)
    _check_layout(runtime, mechanism)
    records_ledger = records_event = None
    if mechanism.dp_sgd is not None:
        # Record-level: this node's own DP-SGD steps, at q from its own example count.
        records_ledger = NodeLedger(
            record_ledger_path(path), delta=policy.delta, relation=mechanism.dp_sgd.relation
        )
        records_event = record_event(mechanism, examples=len(runtime.workload.clients[pid]))
        records_ledger.check(records_event, policy.max_record_epsilon)
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
        report_clip_bit=mechanism.count_noise is not None,
        diagnostics=False,
        fail_closed=True,
        record=mechanism.dp_sgd,
    )
    fingerprint = mechanism.fingerprint()
    record_epsilon = None
    if records_ledger is not None:
        records_ledger.charge(
            records_event,
            kind="round",
            round=t,
            cap=policy.max_record_epsilon,
            label=f"run {context.run_id} "
            + mechanism.dp_sgd.label(t, len(runtime.workload.clients[pid]))
            + f" ({fingerprint})",
        )
        record_epsilon = records_ledger.epsilon()
    clip = "unclipped" if mechanism.clip_norm is None else f"C={mechanism.clip_norm:g}"
    if mechanism.count_noise is not None:
        clip += (
            f", adaptive clipping: clip bit counted with sigma_b={mechanism.count_noise:g}, "
            f"charged at effective sigma={mechanism.charged_noise_multiplier:g}"
        )
    ledger.charge(
        event,
        kind="round",
        round=t,
        cap=policy.max_epsilon,
        label=f"run {context.run_id} round {t}: {mechanism.method}, sigma="
        f"{mechanism.noise_multiplier:g}, {clip}, {mechanism.placement} noise, clip "
        f"{mechanism.clip_point}, server relation {mechanism.relation} ({fingerprint})",
    )
    # The privatised latent (and, with adaptive clipping, the clip bit whose count the
    # aggregator noises) is the only thing computed from this node's data that leaves it.
    update = {LATENT: result.message}
    if mechanism.count_noise is not None:
        update[CLIP_BIT] = torch.tensor([result.clip_bit], dtype=torch.float32)
    return _reply(
        message, {"update": to_record(update)}, fingerprint, record_epsilon=record_epsilon
    )
