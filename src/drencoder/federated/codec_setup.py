"""The uplink codec of a run, built at its start and, for some options, refreshed after
rounds (docs/design.md §2, §5; docs/codecs.md).

Identity and random projection need nothing from the clients. DR-Encoder's codec is chosen
by ``codec.basis``:

- ``autoencoder`` (the paper's method) runs stage 1 across the wire: the server draws the
  clients' seeds (:func:`stage1_tasks`), the client pool returns each client's released
  statistics, the server pools the ones that arrived and trains the auto-encoder
  (:func:`train_codec`), charges the release and writes the ``stage1`` metrics row;
- ``random``, ``history``, ``proxy``, ``sketch``, ``energy``: a
  :class:`~drencoder.codecs.SubspaceCodec` built by :mod:`drencoder.federated.structured`
  (``energy`` uses the same stage-1 statistics release, ``sketch`` a release of its own;
  both charged here, before any client is asked).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from drencoder.codecs import Codec, IdentityCodec, RandomProjectionCodec
from drencoder.config import CodecBasis, RunConfig
from drencoder.errors import ClientDropoutWarning
from drencoder.federated import budget, rundir
from drencoder.federated.methods import CodecKind
from drencoder.federated.rounds import failure_code
from drencoder.federated.stage1 import stage1_tasks, train_codec

if TYPE_CHECKING:
    from drencoder.federated.orchestration import FederatedServer

_UNRELEASED = ("statistics_norms", "clipped_clients")


def build_codec(server: FederatedServer) -> Codec:
    """The run's codec: identity, seeded projection, stage 1's auto-encoder or a subspace."""
    from drencoder.federated.rounds import derive_seed

    c = server.config.codec
    if server.spec.codec is CodecKind.IDENTITY:
        return IdentityCodec(input_dim=server.layout.dim)
    if server.spec.codec is CodecKind.PROJECTION:
        return RandomProjectionCodec(
            input_dim=server.layout.dim,
            compression_ratio=c.compression_ratio,
            chunk_size=c.chunk_size,
            seed=derive_seed(server.config.seed, "projection"),
        )
    if c.basis is not CodecBasis.AUTOENCODER:
        from drencoder.federated.structured import build_structured

        return build_structured(server)
    return _stage1(server)


def release_statistics(server: FederatedServer) -> tuple[list, list, dict]:
    """Stage 1's statistics release: charge it, ask every client, keep what arrived.

    Returns the released statistics and unreleased norms (simulation only; None entries
    otherwise) of the clients that replied, in client order, and the failures."""
    tasks = stage1_tasks(server.config.clients, generator=server.generators["stage1"])
    if server.spec.private:  # written ahead: charged before any client is asked
        server.charge(
            budget.statistics_event(server.release, server.relation),
            kind="statistics",
            label=f"stage-1 statistics, {server.relation.value}",
        )
    replies = server._pool().release_statistics(tasks, global_state=server.global_state)
    received = {c: r for c, r in replies.items() if not isinstance(r, BaseException)}
    failed = {c: failure_code(r) for c, r in replies.items() if isinstance(r, BaseException)}
    # Validation point: the received (noised) statistics, before pooling.
    if len(received) < len(tasks):
        warnings.warn(
            f"stage 1: {len(received)} of {len(tasks)} clients sent statistics; the "
            f"prior is pooled from those (failed: {failed}); the release is still "
            "charged to every client",
            ClientDropoutWarning,
            stacklevel=2,
        )
    order = sorted(received)
    return [received[c][0] for c in order], [received[c][1] for c in order], failed


def _stage1(server: FederatedServer) -> Codec:
    """DR-Encoder stage 1: the clients' releases, then the auto-encoder (server)."""
    released, norms, failed = release_statistics(server)
    result = train_codec(
        released,
        server.config,
        generator=server.generators["stage1"],
        device=server.config.model.device,
        statistics_norms=None if any(n is None for n in norms) else norms,
        progress=server.progress,
    )
    # Clients receive the encoder (and the normalisation); the decoder stays on the server.
    encoder_bytes = sum(
        t.numel() * t.element_size()
        for k, t in result.codec.state_dict().items()
        if ".decoder." not in k
    )
    row = {
        "kind": "stage1",
        "round": 0,
        "bytes_up": len(released) * stats_bytes(server.layout, server.config),
        "bytes_down": len(released) * encoder_bytes,
        "failed": {str(c): r for c, r in failed.items()},
        **{k: v for k, v in result.report.items() if k not in _UNRELEASED},
    }
    if "statistics_norms" in result.report:
        # Known only inside a simulation (a real server never sees them): the
        # clients' unreleased statistics norms, for choosing stage1.clip_norm.
        row[rundir.NOT_COVERED] = {k: result.report[k] for k in _UNRELEASED}
    server._append(row)
    return result.codec


def stats_bytes(layout, config: RunConfig) -> int:
    """Bytes one client uploads in stage 1: a mean and a std per block per epoch."""
    return 2 * len(layout.blocks) * config.stage1.epochs * 4
