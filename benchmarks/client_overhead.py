"""What does privatising and compressing an update add to a client's round, per codec?

On the embedded model (SmolLM2-135M-Instruct, CPU) with the default run config
(local.steps = 2, batch 8, max_length 96, LoRA r = 8 on q,k,v,o), each repetition runs one
real ``local_update`` on real sentiment batches, then times ``make_message`` (encode, clip,
noise; the client's whole extra work) of that update for every codec, in a rotating order:

- ``identity``: dp-fedavg-lora (clip and noise the full update, d = 921,600);
- ``random-projection``: dp-random-projection (seeded chunked projection to k = d/64);
- ``mlp-autoencoder``: dr-encoder (the default chunked MLP auto-encoder for a prior sampler
  built from the statistics of one real update, trained a few steps: timing only).

Reported per codec: the median over repetitions of (make_message time / local training time
of the same repetition). Local training is the same for the three codecs (all send A and B),
so one training per repetition serves them all. Usage (about 2 minutes on 2 cores):

    python benchmarks/client_overhead.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine, median_ratio, sig, write

from drencoder.codecs import IdentityCodec, RandomProjectionCodec, train_autoencoder
from drencoder.config import load_config
from drencoder.federated.client import local_update, make_message
from drencoder.federated.stage1 import make_autoencoder
from drencoder.federated.workload import build_workload
from drencoder.lora import adapter_layout, attach_lora, get_adapter_state
from drencoder.mechanisms import GaussianMechanism
from drencoder.models import load_model
from drencoder.prior import BlockStatistics, PooledStatistics, PriorSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ae-steps", type=int, default=5, help="auto-encoder training steps")
    args = parser.parse_args()

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
        start = time.perf_counter()
        update, _ = local_update(model, global_state, batches, cfg.local, layout=layout, seed=rep)
        return update, time.perf_counter() - start

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
    }
    mechanism = GaussianMechanism(
        clip_norm=cfg.privacy.clip_norm, noise_multiplier=1.0, placement=cfg.privacy.placement
    )
    noise = torch.Generator().manual_seed(1)

    def message(codec, update) -> float:
        start = time.perf_counter()
        make_message(
            update,
            codec=codec,
            mechanism=mechanism,
            clip_point=cfg.privacy.clip_point,
            generator=noise,
        )
        return time.perf_counter() - start

    for codec in codecs.values():
        message(codec, warm_update)  # warm-up

    names = list(codecs)
    training: list[float] = []
    extras: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.repeat):
        update, seconds = train(rep)
        training.append(seconds)
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            extras[name].append(message(codecs[name], update))

    result = {
        "benchmark": "client_overhead",
        **machine(),
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
        "local_training_s": [round(t, 3) for t in training],
        "codecs": {
            name: {
                "latent_dim": codecs[name].latent_dim,
                "make_message_s": [round(t, 4) for t in extras[name]],
                "ratio_to_training_median": sig(median_ratio(extras[name], training)),
                "ratios": [sig(e / t) for e, t in zip(extras[name], training, strict=True)],
                "make_message_median_s": round(statistics.median(extras[name]), 4),
            }
            for name in names
        },
        "local_training_median_s": round(statistics.median(training), 3),
    }
    write("client_overhead", result)


if __name__ == "__main__":
    main()
