"""drencoder on Flower's Deployment Runtime: a ServerApp and a ClientApp.

The only package that imports ``flwr``: :mod:`.records` (the wire format), :mod:`.client`
(the ClientApp) and :mod:`.server` (the ServerApp). It carries messages; the method is the
simulator's: the ServerApp runs
:class:`~drencoder.federated.server.orchestration.FederatedServer` (sampling, budget, aggregation,
ledger, checkpoints, outputs) with a :class:`FlowerClients` pool, and
the ClientApp runs :class:`~drencoder.federated.client.runtime.ClientRuntime` on the SuperNode's
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

A node does not trust the server (:mod:`drencoder.federated.client.policy`): it checks the
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
ledger), the policy keys of :data:`~drencoder.federated.client.policy.POLICY_KEYS`, and
``noise-seed`` (tests only).
"""

from drencoder.integrations.flower.client import client_app
from drencoder.integrations.flower.records import (
    CLIENT_ERROR_CODE,
    REFUSED_CODE,
    codec_content,
    codec_from_content,
    config_from_run_config,
    from_record,
    to_record,
)
from drencoder.integrations.flower.server import FlowerClients, round_mechanism, server_app

__all__ = [
    "CLIENT_ERROR_CODE",
    "REFUSED_CODE",
    "FlowerClients",
    "client_app",
    "codec_content",
    "codec_from_content",
    "config_from_run_config",
    "from_record",
    "round_mechanism",
    "server_app",
    "to_record",
]
