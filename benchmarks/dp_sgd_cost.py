"""What does record-level DP-SGD cost per local step, against a non-private step?

On the embedded model (SmolLM2-135M-Instruct, CPU; LoRA r = 8 on q,k,v,o) each repetition
times, back to back and in alternating order, on the same real sentiment batch:

- ``plain``: one non-private optimizer step (``train_local``, one step: forward, backward
  of the batch loss, SGD);
- ``dp_sgd``: one DP-SGD step (``train_local_dp``, one step: forward, backward with the
  per-example hooks, per-example gradients, clipping, noise, SGD), in the LoRA space;
- ``dp_sgd_latent``: the same with clipping and noise in a random projection's latent
  (k = d/64, ``privacy.record_space = latent`` with dp-random-projection).

Two settings: the full model (adapters on every layer, the default config), and the
prefix-cached top (``lora.layers = top:1``: only the last layer runs, on cached states; the
cache is filled before timing). Reported: the median over repetitions of the paired ratio
(DP-SGD step time / plain step time of the same repetition), by wall clock and process CPU
time. Usage (a few minutes on 2 busy cores):

    python benchmarks/dp_sgd_cost.py --repeat 7 --batch-size 8
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import machine, median_ratio, sig, write

from drencoder.codecs import RandomProjectionCodec
from drencoder.config import load_config
from drencoder.data import collate
from drencoder.federated.workload import build_workload
from drencoder.lora import (
    TrainSettings,
    adapter_layout,
    attach_lora,
    get_adapter_state,
    prefix_cached,
    set_adapter_state,
    train_local,
)
from drencoder.lora.dp_sgd import DpSgd, train_local_dp
from drencoder.models import load_model

CLOCKS = ("wall", "cpu")
VARIANTS = ("plain", "dp_sgd", "dp_sgd_latent")


def clocks() -> dict[str, float]:
    return {"wall": time.perf_counter(), "cpu": time.process_time()}


def since(start: dict[str, float]) -> dict[str, float]:
    now = clocks()
    return {k: now[k] - start[k] for k in CLOCKS}


def measure(model, lm, batch, *, repeat: int, compression_ratio: float) -> dict:
    layout = adapter_layout(model)
    start_state = get_adapter_state(model)
    settings = TrainSettings(lr=0.01, steps=1, optimizer="sgd")
    n = batch["input_ids"].shape[0]
    dp = DpSgd(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.5, examples=2 * n)
    codec = RandomProjectionCodec(
        input_dim=layout.dim, compression_ratio=compression_ratio, chunk_size=4096, seed=0
    )
    noise = torch.Generator().manual_seed(0)

    def step(variant: str) -> dict[str, float]:
        set_adapter_state(model, start_state)
        start = clocks()
        if variant == "plain":
            train_local(lm, [batch], settings, seed=0)
        else:
            space = codec if variant == "dp_sgd_latent" else None
            train_local_dp(
                lm, [batch], settings, dp, layout=layout, generator=noise, seed=0, space=space
            )
        return since(start)

    for v in VARIANTS:  # warm-up (and, with the prefix cache, fill it)
        step(v)
    times: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for rep in range(repeat):
        order = VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]
        for v in order:
            times[v].append(step(v))
    out = {
        "update_dim": layout.dim,
        "latent_dim": codec.latent_dim,
        "step_s": {v: {k: [round(t[k], 4) for t in times[v]] for k in CLOCKS} for v in VARIANTS},
    }
    for v in VARIANTS[1:]:
        out[f"ratio_{v}"] = {
            k: sig(median_ratio([t[k] for t in times[v]], [t[k] for t in times["plain"]]))
            for k in CLOCKS
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    info = machine()
    cfg = load_config()
    base, tokenizer = load_model(cfg.model.name, progress=False)
    workload = build_workload(cfg, tokenizer)
    examples = workload.clients[0][: args.batch_size]
    batch = collate(examples, pad_token_id=workload.pad_token_id)

    settings = {}
    full = attach_lora(base, cfg.lora, seed=0)
    settings["full_model"] = measure(
        full, full, batch, repeat=args.repeat, compression_ratio=cfg.codec.compression_ratio
    )
    base, _ = load_model(cfg.model.name, progress=False)  # a fresh base for the second setting
    top = attach_lora(base, dataclasses.replace(cfg.lora, layers="top:1"), seed=0)
    settings["prefix_cached_top1"] = measure(
        top,
        prefix_cached(top, mode="memory"),
        batch,
        repeat=args.repeat,
        compression_ratio=cfg.codec.compression_ratio,
    )
    write(
        "dp_sgd_cost",
        {
            "benchmark": "dp_sgd_cost",
            **info,
            "model": cfg.model.name,
            "config": {
                "batch_size": args.batch_size,
                "max_length": cfg.data.max_length,
                "lora_rank": cfg.lora.rank,
                "target_modules": list(cfg.lora.target_modules),
                "loss_on": cfg.data.loss_on.value,
            },
            "repeat": args.repeat,
            "settings": settings,
        },
    )


if __name__ == "__main__":
    main()
