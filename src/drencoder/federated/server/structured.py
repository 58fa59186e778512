"""DR-Encoder's structured codecs (``codec.basis`` other than ``autoencoder``;
docs/codecs.md, "Structured codecs").

Every option builds a :class:`~drencoder.codecs.SubspaceCodec` of latent size
k = ``latent_dim_for(d, codec.compression_ratio)`` (the same bytes as the random projection
and the auto-encoder), allocated over the LoRA matrices by :func:`~drencoder.codecs.bases.allocate`:

- ``random``: a seeded random orthonormal basis per matrix. Privacy cost: none.
- ``history``: the top directions of the sum of all decoded DP aggregates so far and of
  the last ``codec.history_rounds`` ones, for half of each matrix's vectors, the other
  half fresh random directions (round 1: all random). None: post-processing of released
  aggregates.
- ``proxy``: the server's own updates on public examples (:mod:`.proxy`). None: no client
  data.
- ``sketch``: a DP sketch of every client's warm-up update, released in stage 1. One
  Gaussian release, charged to every client before it is asked.
- ``energy``: the latent split by the block energies of the DP stage-1 statistics, random
  directions inside each block. The statistics release, charged as for ``autoencoder``.

The ``history`` and ``proxy`` subspaces are rebuilt every ``codec.refresh_every`` rounds
(:func:`refresh`), from the decoded aggregates every client receives (through the global
adapter) or from the server's public data, and the random completion is seeded by
``seed`` and the round: a client can recompute the basis it is sent. Each refreshed codec
is saved under ``checkpoints/codec-NNNN/`` (with the history it was built from), and the
checkpoint names it, so a resumed run continues with the codec of its checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dp_accounting
import torch
from safetensors.torch import load_file, save_file

from drencoder.codecs import SubspaceCodec, latent_dim_for, load_codec
from drencoder.codecs.bases import allocate, bases_from_vectors, random_bases, side_vectors
from drencoder.codecs.subspace import matrix_shape, short_side
from drencoder.config import CodecBasis, RunConfig
from drencoder.federated.protocol import ClientTask, RoundPlan, failure_code
from drencoder.federated.seeds import draw_seed, named_generator
from drencoder.federated.server import budget
from drencoder.federated.server.proxy import proxy_updates, proxy_workload
from drencoder.federated.server.stage1 import release_statistics, stats_bytes
from drencoder.federated.server.state import ServerState
from drencoder.federated.server.validation import accept_messages, message_limits
from drencoder.lora import Layout
from drencoder.mechanisms import ClipPoint
from drencoder.prior import PriorSampler, StatisticsRelease, pool_statistics

HISTORY_FILE = "history.safetensors"
REFRESHED = ("history", "proxy")


def sketch_release(config: RunConfig) -> StatisticsRelease:
    """The sketch's Gaussian release (clip, local noise), as a stage-1 release."""
    c = config.codec
    return StatisticsRelease(
        enabled=True, clip_norm=c.sketch_clip_norm, noise_multiplier=c.sketch_noise_multiplier
    )


def stage1_event(server: ServerState) -> dp_accounting.DpEvent | None:
    """The one-off stage-1 charge of the run's codec option (None: it releases nothing)."""
    if not server.spec.stage1:
        return None
    basis = server.config.codec.basis
    if basis in (CodecBasis.AUTOENCODER, CodecBasis.ENERGY):
        return budget.statistics_event(server.release, server.relation)
    if basis is CodecBasis.SKETCH:
        return budget.statistics_event(sketch_release(server.config), server.relation)
    return None


def latent_dims(layout: Layout, config: RunConfig, weights=None) -> list[int]:
    k = latent_dim_for(layout.dim, compression_ratio=config.codec.compression_ratio)
    return allocate(layout, latent=k, weights=weights)


def build_structured(server: ServerState) -> SubspaceCodec:
    """The run's first subspace codec (charging a stage-1 release where the option has one)."""
    cfg, layout = server.config, server.layout
    basis = cfg.codec.basis
    gen = named_generator(cfg.seed, "codec/0")
    server.codec_history = []
    if basis is CodecBasis.ENERGY:
        dims, info = _energy_dims(server)
        codec = SubspaceCodec(
            layout=layout, bases=random_bases(layout, dims, generator=gen), source="energy"
        )
        # The statistics release's row, as for the auto-encoder (the run summary states
        # the release from it).
        server.append_row({"kind": "stage1", "round": 0, "basis": basis.value, **info})
        return codec
    dims = latent_dims(layout, cfg)
    if basis is CodecBasis.PROXY:
        vectors = _proxy_vectors(server, 0)
        bases, learned = bases_from_vectors(vectors, layout, dims, generator=gen)
    elif basis is CodecBasis.SKETCH:
        bases, learned = _sketch_bases(server, dims, gen)
    else:  # random; history starts random (round 1 has no aggregate yet)
        bases, learned = random_bases(layout, dims, generator=gen), [0] * len(dims)
    codec = SubspaceCodec(layout=layout, bases=bases, source=basis.value)
    server.append_row(
        {
            "kind": "codec",
            "round": 0,
            "basis": basis.value,
            "latent_dim": codec.latent_dim,
            "learned_vectors": sum(learned),
            "vectors": sum(dims),
        }
    )
    return codec


def _energy_dims(server: ServerState) -> tuple[list[int], dict]:
    """Latent split by the released per-block energies size·(mean² + std²)."""
    released, _, failed = release_statistics(server)
    release = server.release
    pooled = pool_statistics(
        released,
        method=server.config.stage1.pooling,
        released_noise_std=release.noise_std,
        clip_norm=release.clip_norm if release.enabled else None,
    )
    mean, std = (t.double() for t in PriorSampler(pooled).block_moments())
    sizes = torch.tensor([b.size for b in server.layout.blocks], dtype=torch.float64)
    energy = sizes * (mean**2 + std**2)
    dims = latent_dims(server.layout, server.config, weights=energy.tolist())
    info = {
        "bytes_up": len(released) * stats_bytes(server.layout, server.config),
        "failed": {str(c): r for c, r in failed.items()},
        "vectors": sum(dims),
        "blocks_with_latent": sum(1 for a in dims if a),
    }
    return dims, info


def _proxy_vectors(server: ServerState, t: int) -> torch.Tensor:
    if server.proxy is None:
        server.proxy = proxy_workload(server.config, server.workload, server.tokenizer)
    return proxy_updates(
        server.lm,
        server.global_state,
        server.proxy,
        server.config,
        layout=server.layout,
        generator=named_generator(server.config.seed, f"proxy/{t}"),
    )


def _sketch_bases(server: ServerState, dims: list[int], gen: torch.Generator):
    """Stage 1's DP sketch: every client trains ``local.steps`` steps from the initial
    adapter (a round-0 task), multiplies each LoRA matrix by a shared random orthonormal
    r × s matrix on its rank side, clips the whole sketch to ``codec.sketch_clip_norm`` and
    adds Gaussian noise (local placement, the statistics release's mechanism). The server
    takes, per matrix, the top left singular vectors of the received sketches."""
    cfg, layout = server.config, server.layout
    release = sketch_release(cfg)
    if server.spec.private:  # written ahead: charged before any client is asked
        server.charge(
            budget.statistics_event(release, server.relation),
            kind="sketch",
            label=f"stage-1 DP sketch (width {cfg.codec.sketch_width}), {server.relation.value}",
        )
    encoder = sketch_encoder(layout, cfg.codec.sketch_width, generator=gen)
    mechanism = release.mechanism
    stage1 = server.generators["stage1"]
    tasks = tuple(
        ClientTask(round=0, client=c, data_seed=draw_seed(stage1), train_seed=draw_seed(stage1))
        for c in range(cfg.clients)
    )
    replies = server.pool().train(
        RoundPlan(round=0, tasks=tasks, charge=None),
        global_state=server.global_state,
        codec=encoder,
        mechanism=mechanism,
    )
    arrived = {c: r.message for c, r in replies.items() if not isinstance(r, BaseException)}
    failed = {c: failure_code(r) for c, r in replies.items() if isinstance(r, BaseException)}
    accepted, rejected = accept_messages(
        arrived, **message_limits(encoder, mechanism, ClipPoint.LATENT)
    )
    bases, learned = sketch_bases(
        [accepted[c] for c in sorted(accepted)], encoder, dims, generator=gen
    )
    server.append_row(
        {
            "kind": "sketch",
            "round": 0,
            "clients": len(accepted),
            "bytes_up": len(accepted) * encoder.bytes_per_upload,
            "failed": {str(c): r for c, r in failed.items()},
            "rejected": {str(c): r for c, r in rejected.items()},
            "release": {**release.to_dict(), "noise_std": release.noise_std},
            "width": cfg.codec.sketch_width,
        }
    )
    return bases, learned


def sketch_encoder(layout: Layout, width: int, *, generator: torch.Generator) -> SubspaceCodec:
    """The sketch's encoder: per LoRA matrix, its rank side multiplied by a shared random
    orthonormal r × s matrix (s = ``width``, at most r), so a client sends n_b × s numbers
    per matrix that span (part of) its update's long-side column space."""
    sides = [short_side(b) for b in layout.blocks]
    widths = [
        min(int(width), matrix_shape(b)[s]) for b, s in zip(layout.blocks, sides, strict=True)
    ]
    return SubspaceCodec(
        layout=layout,
        bases=random_bases(layout, widths, generator=generator, sides=sides),
        sides=sides,
        source="sketch-encoder",
    )


def sketch_bases(
    messages, encoder: SubspaceCodec, dims: list[int], *, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[int]]:
    """Per matrix, the top a_b left singular vectors of the released sketches side by side
    (computed as eigenvectors of the n_b × n_b sum of their outer products), completed at
    random. ``messages`` are the clipped and noised sketch latents."""
    layout = encoder.layout
    long_sides = [1 - s for s in encoder.sides]
    grams = [
        torch.zeros(matrix_shape(b)[s], matrix_shape(b)[s], dtype=torch.float64)
        for b, s in zip(layout.blocks, long_sides, strict=True)
    ]
    for message in messages:
        x = encoder.decode(message).unsqueeze(0).double()
        for i, side in enumerate(long_sides):
            v = side_vectors(x, layout, i, side)
            grams[i] += v @ v.T
    return bases_from_vectors(
        None, layout, dims, generator=generator, sides=long_sides, per_block=grams
    )


def refresh(server: ServerState, decoded: torch.Tensor, t: int) -> dict | None:
    """After round ``t``: rebuild a ``history`` or ``proxy`` subspace (every
    ``codec.refresh_every`` rounds) from the round's decoded DP aggregate ``decoded`` or the
    server's public data, save it, and make it the server's codec. Returns what the round's
    metrics row records about it (None when nothing changed)."""
    cfg = server.config
    basis = cfg.codec.basis
    if basis.value not in REFRESHED or not server.spec.stage1:
        return None
    if basis is CodecBasis.HISTORY:
        agg = decoded.detach().float().cpu()
        server.codec_history = [*server.codec_history, agg][-cfg.codec.history_rounds :]
        total = server.codec_cumulative
        server.codec_cumulative = agg.clone() if total is None else total + agg
    if t % cfg.codec.refresh_every:
        return None
    dims = latent_dims(server.layout, cfg)
    gen = named_generator(cfg.seed, f"codec/{t}")
    if basis is CodecBasis.HISTORY:
        vectors = history_vectors(server.codec_cumulative, server.codec_history)
    else:
        vectors = _proxy_vectors(server, t)
    share = HISTORY_SHARE if basis is CodecBasis.HISTORY else 1.0
    bases, learned = bases_from_vectors(
        vectors, server.layout, dims, generator=gen, learned_share=share
    )
    codec = SubspaceCodec(layout=server.layout, bases=bases, source=basis.value)
    name = f"codec-{t:04d}"
    _save(server, codec, name)
    server.codec, server.codec_dir = codec, name
    return {"refreshed": name, "learned_vectors": sum(learned), "vectors": sum(dims)}


HISTORY_SHARE = 0.5
"""At most this share of each block's ``history`` vectors comes from the aggregates; the
rest are fresh random directions at every refresh. A decoded aggregate holds nothing outside
the subspace it was sent through, so a basis made only of aggregates would never leave the
round-1 random subspace (measured: docs/codecs.md)."""


def history_vectors(cumulative: torch.Tensor, recent: list[torch.Tensor]) -> torch.Tensor:
    """What the ``history`` subspace is the top principal directions of: the sum of every
    decoded aggregate so far and the last few aggregates themselves.

    A decoded aggregate lies in the subspace it was sent through, so recent aggregates
    alone can only re-find directions earlier codecs kept; each new codec explores fresh
    random directions, and the running sum accumulates the update's projections on all of
    them (its share of a steady update direction grows with the dimensions explored)."""
    return torch.stack([cumulative, *recent])


def _save(server: ServerState, codec: SubspaceCodec, name: str) -> None:
    root = Path(server.run_dir) / "checkpoints"
    codec.save(root / name)
    history = getattr(server, "codec_history", [])
    if history:
        tensors = {f"round.{i}": h for i, h in enumerate(history)}
        tensors["cumulative"] = server.codec_cumulative
        save_file(tensors, str(root / name / HISTORY_FILE))
    # Keep the codecs the checkpoints still name (and this one); drop older ones.
    keep = {name, "codec"}
    for state in root.glob("round-*/state.json"):
        keep.add(json.loads(state.read_text()).get("extra", {}).get("codec_dir", "codec"))
    for old in root.glob("codec-*"):
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def restore(server: ServerState, codec_dir: str):
    """The codec a checkpoint names, and (``history``) the aggregates it was built from."""
    directory = Path(server.run_dir) / "checkpoints" / codec_dir
    codec = load_codec(directory)
    history = directory / HISTORY_FILE
    tensors = load_file(str(history)) if history.is_file() else {}
    server.codec_cumulative = tensors.pop("cumulative", None)
    server.codec_history = [tensors[f"round.{i}"] for i in range(len(tensors))]
    server.codec_dir = codec_dir
    return codec
