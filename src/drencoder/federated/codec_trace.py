"""How much of real updates each codec keeps, round after round (``drencoder codec-report
--rounds N``; docs/codecs.md).

A non-private federated trajectory: each round, ``per_round`` clients (drawn without
replacement from a generator of the report's own) train ``local.steps`` steps from the
global adapter; the global adapter then moves by the server optimizer (``server.*``)
applied to the exact mean of their updates. On every round's updates it measures, for each
codec at the same latent size k:

- ``energy``: the mean over updates of cos²(u, Dec(Enc(u))), which for the linear codecs
  here (orthogonal projections) is the share ‖Pu‖² / ‖u‖² of the update's energy kept;
- ``mean_energy``: the same for the round's mean update (what the aggregate carries).

The codecs: ``random-projection`` (``dp-random-projection``'s), and DR-Encoder's options
``autoencoder`` (the paper's), ``random``, ``history``, ``proxy``, ``sketch``, ``energy``.
``history`` is refreshed after each round from its *own* decoded aggregates
Dec(mean Enc(u)) (their running sum and the last ``codec.history_rounds``), each with,
when ``aggregate_noise`` > 0, Gaussian noise of that std on every latent coordinate of the
mean (σC/n for central noise), as a run would see it. ``proxy`` is rebuilt each round
from the server's updates on public items from the current adapter. The stage-1 codecs
(``autoencoder``, ``sketch``, ``energy``) are built once, from the initial adapter, and
passed in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from drencoder.codecs import Codec, RandomProjectionCodec, SubspaceCodec
from drencoder.codecs.bases import bases_from_vectors, random_bases
from drencoder.codecs.report import relative_errors
from drencoder.config import RunConfig
from drencoder.federated.seeds import derive_seed, draw_seed, named_generator
from drencoder.federated.server.optimizer import GlobalOptimizer
from drencoder.federated.server.proxy import proxy_updates, proxy_workload
from drencoder.federated.server.structured import HISTORY_SHARE, history_vectors, latent_dims
from drencoder.federated.workload import Workload
from drencoder.lora import Layout, warmup_updates


def energies(codec: Codec, updates: torch.Tensor) -> dict:
    """cos² of each update with its reconstruction (mean, min, max) and of the mean update."""
    x = updates.to(device=codec.device, dtype=torch.float32)
    _, cos = relative_errors(x, codec.decode(codec.encode(x)))
    mean = x.mean(0, keepdim=True)
    _, mean_cos = relative_errors(mean, codec.decode(codec.encode(mean)))
    sq = cos.clamp(min=0) ** 2
    return {
        "energy": float(sq.mean()),
        "energy_min": float(sq.min()),
        "energy_max": float(sq.max()),
        "mean_energy": float(mean_cos.clamp(min=0)[0] ** 2),
    }


def trace(
    model,
    initial: dict[str, torch.Tensor],
    workload: Workload,
    config: RunConfig,
    tokenizer,
    *,
    layout: Layout,
    rounds: int,
    per_round: int,
    fixed: Mapping[str, Codec],
    aggregate_noise: float = 0.0,
    progress: bool = False,
) -> list[dict]:
    """One dict per round: its clients, update norms, and every codec's energies."""
    from tqdm.auto import tqdm

    n_clients = len(workload.clients)
    per_round = min(per_round, n_clients)
    pick, data, train = (
        named_generator(config.seed, "trace/clients"),
        named_generator(config.seed, "data"),
        named_generator(config.seed, "train"),
    )
    noise = named_generator(config.seed, "trace/noise")
    dims = latent_dims(layout, config)
    c = config.codec
    projection = RandomProjectionCodec(
        input_dim=layout.dim,
        compression_ratio=c.compression_ratio,
        chunk_size=c.chunk_size,
        seed=derive_seed(config.seed, "projection"),
    )
    random = SubspaceCodec(
        layout=layout,
        bases=random_bases(layout, dims, generator=named_generator(config.seed, "codec/0")),
    )
    history, kept, total = random, [], None
    proxy = proxy_workload(config, workload, tokenizer)
    optimizer = GlobalOptimizer(config.server)
    state = dict(initial)
    out = []
    for t in tqdm(range(1, rounds + 1), desc="rounds", disable=not progress):
        start = time.perf_counter()
        clients = torch.randperm(n_clients, generator=pick)[:per_round].tolist()
        updates = []
        for client in clients:
            batches = workload.batches(
                client, steps=config.local.steps, batch_size=config.data.batch_size, generator=data
            )
            updates += warmup_updates(
                model, state, [batches], config.local, layout=layout, seed=draw_seed(train)
            )
        u = torch.stack(updates)
        public = proxy_updates(
            model,
            state,
            proxy,
            config,
            layout=layout,
            generator=named_generator(config.seed, f"proxy/{t}"),
        )
        bases, _ = bases_from_vectors(
            public, layout, dims, generator=named_generator(config.seed, f"codec/{t}")
        )
        codecs = {
            "random-projection": projection,
            **dict(fixed),
            "random": random,
            "history": history,
            "proxy": SubspaceCodec(layout=layout, bases=bases, source="proxy"),
        }
        row = {
            "round": t,
            "clients": len(clients),
            "update_norm": float(u.double().norm(dim=1).mean()),
            "mean_norm": float(u.double().mean(0).norm()),
            "codecs": {name: energies(codec, u) for name, codec in codecs.items()},
        }
        # history: refreshed from its own decoded (optionally noised) aggregate.
        z = history.encode(u).mean(0)
        if aggregate_noise > 0:
            z = z + aggregate_noise * torch.randn(z.shape, generator=noise)
        agg = history.decode(z)
        kept = [*kept, agg][-c.history_rounds :]
        total = agg.clone() if total is None else total + agg
        bases, learned = bases_from_vectors(
            history_vectors(total, kept),
            layout,
            dims,
            generator=named_generator(config.seed, f"codec/{t}"),
            learned_share=HISTORY_SHARE,
        )
        history = SubspaceCodec(layout=layout, bases=bases, source="history")
        row["history_learned_vectors"] = sum(learned)
        state = optimizer.apply(state, layout.unflatten(u.mean(0)))
        row["seconds"] = time.perf_counter() - start
        out.append(row)
    return out
