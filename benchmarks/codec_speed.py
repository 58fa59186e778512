"""How fast are the codecs at SmolLM2 size, and does the default AE training fit a minute?

Question: at d = 921,600 (SmolLM2-135M, LoRA r = 8 on q/k/v/o of 30 layers), how long do
encode and decode of one update take for every codec, and how long does training the
chunked MLP auto-encoder with the library defaults take, on a given number of CPU threads?
Synthetic per-block statistics of update size stand in for stage-1 statistics.

Prints one JSON line. Usage:

    .venv/bin/python benchmarks/codec_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from drencoder.codecs import (
    ConvAutoencoderCodec,
    IdentityCodec,
    MlpAutoencoderCodec,
    RandomProjectionCodec,
    train_autoencoder,
)
from drencoder.lora.layout import Layout
from drencoder.prior import BlockStatistics, PooledStatistics, PriorSampler


def smollm2_layout(*, layers: int = 30, hidden: int = 576, kv: int = 192, rank: int = 8) -> Layout:
    shapes = {}
    for i in range(layers):
        for module, out in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv), ("o_proj", hidden)):
            shapes[f"layers.{i}.self_attn.{module}.lora_A"] = (rank, hidden)
            shapes[f"layers.{i}.self_attn.{module}.lora_B"] = (out, rank)
    return Layout.from_shapes(shapes)


def timed(fn, *, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(codec, x) -> float:
    y = codec.decode(codec.encode(x))
    xn, yn = codec.prepare(x), codec.prepare(y)
    return float(((yn - xn) ** 2).sum() / (xn**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: library's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    layout = smollm2_layout()
    gen = torch.Generator().manual_seed(0)
    n = len(layout.blocks)
    stats = BlockStatistics(
        layout=layout,
        means=torch.randn(n, generator=gen) * 1e-4,
        stds=torch.rand(n, generator=gen) * 5e-3 + 5e-4,
    )
    sampler = PriorSampler(PooledStatistics.single(stats))
    x = sampler.sample(1, generator=gen)[0]
    codecs = {
        "identity": IdentityCodec(input_dim=layout.dim),
        "random-projection": RandomProjectionCodec(input_dim=layout.dim),
        "mlp-autoencoder": MlpAutoencoderCodec.for_prior(sampler, generator=gen),
        "conv-autoencoder": ConvAutoencoderCodec.for_prior(sampler, generator=gen),
    }
    result = {
        "benchmark": "codec_speed",
        "input_dim": layout.dim,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_average_1m": os.getloadavg()[0],
        "latent_dim": {},
        "encode_s": {},
        "decode_s": {},
    }
    for name, codec in codecs.items():
        z = codec.encode(x)
        result["latent_dim"][name] = codec.latent_dim
        result["encode_s"][name] = round(timed(lambda c=codec: c.encode(x), repeat=args.repeat), 4)
        result["decode_s"][name] = round(
            timed(lambda c=codec, z=z: c.decode(z), repeat=args.repeat), 4
        )

    codec = codecs["mlp-autoencoder"]
    fresh = sampler.sample(4, generator=torch.Generator().manual_seed(1))
    before = relative_error(codec, fresh)
    kwargs = {} if args.steps is None else {"steps": args.steps}
    report = train_autoencoder(codec, sampler, generator=gen, progress=False, **kwargs)
    result["train_mlp"] = {
        "steps": report.steps,
        "samples_per_step": report.samples_per_step,
        "seconds": round(report.seconds, 2),
        "loss_first_window": round(report.initial_loss, 4),
        "loss_last_window": round(report.final_loss, 4),
        "normalised_rel_error_before": round(before, 4),
        "normalised_rel_error_after": round(relative_error(codec, fresh), 4),
        "linear_optimum": round(1 - codec.chunk_latent / codec.chunker.chunk_size, 4),
    }
    conv = codecs["conv-autoencoder"]
    steps = 3
    conv_report = train_autoencoder(conv, sampler, generator=gen, steps=steps, progress=False)
    result["train_conv_s_per_step"] = {
        "samples_per_step": conv_report.samples_per_step,
        "seconds": round(conv_report.seconds / steps, 3),
    }
    result["load_average_1m_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
