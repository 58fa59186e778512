"""The uplink codec of a run, built at its start and, for some options, refreshed after
rounds (docs/design.md §2, §5; docs/codecs.md).

Identity and random projection need nothing from the clients. DR-Encoder's codec is chosen
by ``codec.basis``:

- ``autoencoder`` (the paper's method) runs stage 1 across the wire: the server draws the
  clients' seeds (:func:`~drencoder.federated.server.stage1.stage1_tasks`), the client pool
  returns each client's released statistics, the server pools the ones that arrived and
  trains the auto-encoder (:func:`~drencoder.federated.server.stage1.train_codec`), charges
  the release and writes the ``stage1`` metrics row;
- ``random``, ``history``, ``proxy``, ``sketch``, ``energy``: a
  :class:`~drencoder.codecs.SubspaceCodec` built by :mod:`drencoder.federated.server.structured`
  (``energy`` uses the same stage-1 statistics release, ``sketch`` a release of its own;
  both charged here, before any client is asked).
"""

from __future__ import annotations

from drencoder.codecs import Codec, IdentityCodec, RandomProjectionCodec
from drencoder.config import CodecBasis
from drencoder.config.methods import CodecKind
from drencoder.federated.seeds import derive_seed
from drencoder.federated.server.stage1 import (
    release_statistics,
    stats_bytes,
    train_codec,
)
from drencoder.federated.server.state import ServerState
from drencoder.federated.server.structured import build_structured
from drencoder.reporting.schema import NOT_COVERED

_UNRELEASED = ("statistics_norms", "clipped_clients")


def build_codec(server: ServerState) -> Codec:
    """The run's codec: identity, seeded projection, stage 1's auto-encoder or a subspace."""
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
        return build_structured(server)
    return _stage1(server)


def _stage1(server: ServerState) -> Codec:
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
        row[NOT_COVERED] = {k: result.report[k] for k in _UNRELEASED}
    server.append_row(row)
    return result.codec
