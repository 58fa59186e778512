"""What does privatising and compressing an update add to a client's round, per codec?

On the embedded model (SmolLM2-135M-Instruct, CPU) with the default run config
(local.steps = 2, batch 8, max_length 96, LoRA r = 8 on q,k,v,o), each repetition runs one
real ``local_update`` on real sentiment batches, then times ``make_message`` (encode, clip,
noise; the client's whole extra work) of that update for every codec, in a rotating order:

- ``identity``: dp-fedavg-lora (clip and noise the full update, d = 921,600);
- ``random-projection``: dp-random-projection (seeded chunked projection to k = d/64);
- ``mlp-autoencoder``: dr-encoder (the default chunked MLP auto-encoder for a prior sampler
  built from the statistics of one real update, trained a few steps: timing only);
- ``subspace``: dr-encoder with a structured codec (``codec.basis`` other than
  ``autoencoder``; a random basis here: every basis costs the same to apply).

Reported per codec: the median over repetitions of (make_message time / local training time
of the same repetition), by wall clock and by process CPU time (all threads; on a shared
machine the CPU time is the steadier of the two, as waiting for a core is not counted).
Local training is the same for the three codecs (all send A and B), so one training per
repetition serves them all. Usage (about 2 minutes on 2 idle cores, 10 on busy ones):

    python benchmarks/client_overhead.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine, median_ratio, sig, write

from drencoder.codecs import (
    IdentityCodec,
    RandomProjectionCodec,
    SubspaceCodec,
    train_autoencoder,
)
from drencoder.codecs.bases import random_bases
from drencoder.config import load_config
from drencoder.federated.client.update import local_update, make_message
from drencoder.federated.server.stage1 import make_autoencoder
from drencoder.federated.server.structured import latent_dims
from drencoder.federated.workload import build_workload
from drencoder.lora import adapter_layout, attach_lora, get_adapter_state
from drencoder.mechanisms import GaussianMechanism
from drencoder.models import load_model
from drencoder.prior import BlockStatistics, PooledStatistics, PriorSampler

CLOCKS = ("wall", "cpu")


def clocks() -> dict[str, float]:
    return {"wall": time.perf_counter(), "cpu": time.process_time()}


def since(start: dict[str, float]) -> dict[str, float]:
    now = clocks()
    return {k: now[k] - start[k] for k in CLOCKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ae-steps", type=int, default=5, help="auto-encoder training steps")
    parser.add_argument("--message-calls", type=int, default=5, help="make_message calls per rep")
    args = parser.parse_args()

    info = machine()  # before the work: it records the load at the start
    cfg = load_config()
    base, tokenizer = load_model(cfg.model.name, progress=False)
    model = attach_lora(base, cfg.lora, seed=0)
    layout = adapter_layout(model)
    global_state = get_adapter_state(model)
    workload = build_workload(cfg, tokenizer)
    data = torch.Generator().manual_seed(0)

    def train(rep: int) -> tuple[torch.Tensor, float]:
        client = rep % len(workload.clients)
        batches = workload.batches(
            client, steps=cfg.local.steps, batch_size=cfg.data.batch_size, generator=data
        )
        start = clocks()
        update, _ = local_update(model, global_state, batches, cfg.local, layout=layout, seed=rep)
        return update, since(start)

    warm_update, _ = train(args.repeat)  # warm-up (seed unused below); builds the prior
    gen = torch.Generator().manual_seed(0)
    sampler = PriorSampler(PooledStatistics.single(BlockStatistics.of(warm_update, layout=layout)))
    autoencoder = make_autoencoder(sampler, cfg.codec, generator=gen)
    train_autoencoder(autoencoder, sampler, generator=gen, steps=args.ae_steps, progress=False)
    codecs = {
        "identity": IdentityCodec(input_dim=layout.dim),
        "random-projection": RandomProjectionCodec(
            input_dim=layout.dim,
            compression_ratio=cfg.codec.compression_ratio,
            chunk_size=cfg.codec.chunk_size,
            seed=0,
        ),
        "mlp-autoencoder": autoencoder,
        "subspace": SubspaceCodec(
            layout=layout,
            bases=random_bases(layout, latent_dims(layout, cfg), generator=gen),
        ),
    }
    mechanism = GaussianMechanism(
        clip_norm=cfg.privacy.clip_norm, noise_multiplier=1.0, placement=cfg.privacy.placement
    )
    noise = torch.Generator().manual_seed(1)

    def message(codec, update) -> dict[str, float]:
        """Median over ``--message-calls`` calls (one call is milliseconds: a preemption
        while it runs would dominate it)."""
        times = []
        for _ in range(args.message_calls):
            start = clocks()
            make_message(
                update,
                codec=codec,
                mechanism=mechanism,
                clip_point=cfg.privacy.clip_point,
                generator=noise,
            )
            times.append(since(start))
        return {k: statistics.median(t[k] for t in times) for k in CLOCKS}

    for codec in codecs.values():
        message(codec, warm_update)  # warm-up

    names = list(codecs)
    training: list[dict[str, float]] = []
    extras: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for rep in range(args.repeat):
        update, seconds = train(rep)
        training.append(seconds)
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            extras[name].append(message(codecs[name], update))

    result = {
        "benchmark": "client_overhead",
        **info,
        "model": cfg.model.name,
        "config": {
            "local_steps": cfg.local.steps,
            "batch_size": cfg.data.batch_size,
            "max_length": cfg.data.max_length,
            "lora_rank": cfg.lora.rank,
            "target_modules": list(cfg.lora.target_modules),
            "clip_point": cfg.privacy.clip_point.value,
            "placement": cfg.privacy.placement.value,
        },
        "update_dim": layout.dim,
        "repeat": args.repeat,
        "message_calls": args.message_calls,
        "local_training_s": {k: [round(t[k], 3) for t in training] for k in CLOCKS},
        "codecs": {
            name: {
                "latent_dim": codecs[name].latent_dim,
                "make_message_s": {k: [round(e[k], 4) for e in extras[name]] for k in CLOCKS},
                **{
                    f"ratio_{k}": sig(
                        median_ratio([e[k] for e in extras[name]], [t[k] for t in training])
                    )
                    for k in CLOCKS
                },
            }
            for name in names
        },
    }
    write("client_overhead", result)


if __name__ == "__main__":
    main()
