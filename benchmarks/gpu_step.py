"""One client's local step at 7B scale on a GPU, and what the DR-Encoder extras cost.

Builds Llama-2-7B and Qwen2-7B *architectures* from their published configs with random
bf16 weights (no download), attaches LoRA r=8 on q,k,v,o with drencoder's ``attach_lora``,
and times local training steps on a batch of 8 × 512 random tokens with drencoder's
``train_local`` (AdamW on the adapter). Then it times what a DR-Encoder client adds after
local training: adapter state → update Δ → flat layout → MLP auto-encoder encode (k = d/64)
→ clip → Gaussian noise (``make_message``), with the codec on the same GPU.

Prints one JSON object per architecture and writes them to ``--out`` (JSON list):
step seconds (median of the timed steps), tokens/s, model-FLOPs utilisation against
``--peak-tflops`` (790 TFLOP/s: a measured bf16 dense matmul rate of an H200), peak memory,
and the share of a client round (``--local-steps`` steps + extras) taken by the extras.

FLOPs convention: the base weights are frozen, so a step costs the forward (2N per token)
plus the backward through activations (2N per token) — 4N, not the 6N of full training —
plus attention scores and values, 4·L·s·h per token forward (counting the causal mask's
skipped half, as PaLM's MFU does) times 3 for forward + backward. N excludes the input
embedding (a lookup, not a matmul); the LoRA matrices are negligible (< 0.1 % of N).

    python benchmarks/gpu_step.py --out benchmarks/results/gpu_step.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch

ARCHITECTURES = {
    # A few-MB model to check the script itself on a CPU: --arch tiny-llama --device cpu.
    "tiny-llama": {
        "model_type": "llama",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    },
    # Published configs (config.json of meta-llama/Llama-2-7b-hf and Qwen/Qwen2-7B).
    "llama-2-7b": {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "qwen2-7b": {
        "model_type": "qwen2",
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
}


DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build(name: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ARCHITECTURES[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.config.use_cache = False
    return model, config


def matmul_params(model) -> int:
    """Parameters that take part in matrix products (all but the input embedding)."""
    embed = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embed


def bench(name: str, args) -> dict:
    from drencoder.codecs import MlpAutoencoderCodec
    from drencoder.federated.client.update import make_message
    from drencoder.lora import (
        LoraSettings,
        TrainSettings,
        adapter_delta,
        adapter_layout,
        attach_lora,
        get_adapter_state,
        train_local,
    )
    from drencoder.mechanisms import ClipPoint, GaussianMechanism

    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base, config = build(name)
    n_matmul = matmul_params(base)
    model = attach_lora(
        base,
        LoraSettings(rank=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        seed=0,
    )
    layout = adapter_layout(model)
    b, s = args.batch, args.seq
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (b, s), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    settings = TrainSettings(lr=1e-4, steps=1)

    step_times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        train_local(model, [batch], settings, seed=i)
        sync()
        if i >= args.warmup:
            step_times.append(time.perf_counter() - t0)
    step = statistics.median(step_times)
    peak_train = torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0

    before = get_adapter_state(model)
    codec = MlpAutoencoderCodec(
        layout=layout,
        compression_ratio=1 / 64,
        shift=torch.zeros(len(layout.blocks)),
        scale=torch.ones(len(layout.blocks)),
        init_seed=0,
    ).to(DEVICE)
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0, placement="local")
    noise_gen = torch.Generator(device=DEVICE).manual_seed(0)
    train_local(model, [batch], settings, seed=99)
    extra_times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        after = get_adapter_state(model)
        update = layout.flatten(layout.restrict(adapter_delta(before, after)))
        message = make_message(
            update, codec=codec, mechanism=mech, clip_point=ClipPoint.LATENT, generator=noise_gen
        )
        sync()
        if i >= args.warmup:
            extra_times.append(time.perf_counter() - t0)
    extras = statistics.median(extra_times)

    tokens = b * s
    L, h = config.num_hidden_layers, config.hidden_size
    flops_per_token = 4 * n_matmul + 3 * 4 * L * s * h / 2
    tflops = flops_per_token * tokens / step / 1e12
    round_time = args.local_steps * step + extras
    result = {
        "architecture": name,
        "params": sum(p.numel() for p in base.parameters()),
        "lora_params": layout.dim,
        "latent_dim": codec.latent_dim,
        "message_bytes": message.numel() * message.element_size(),
        "batch": b,
        "seq_len": s,
        "step_seconds": round(step, 4),
        "step_seconds_all": [round(t, 4) for t in step_times],
        "tokens_per_second": round(tokens / step, 1),
        "model_tflops_per_second": round(tflops, 1),
        "mfu": round(tflops / args.peak_tflops, 4),
        "mfu_6n_convention": round(
            (6 * n_matmul + 3 * 4 * L * s * h / 2) * tokens / step / 1e12 / args.peak_tflops, 4
        ),
        "peak_memory_gib": round(peak_train / 2**30, 2),
        "extras_seconds": round(extras, 4),
        "extras_share_of_step": round(extras / (step + extras), 4),
        "local_steps": args.local_steps,
        "extras_share_of_round": round(extras / round_time, 4),
    }
    del model, base, codec
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="*", default=["llama-2-7b", "qwen2-7b"])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to check the script")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=2, help="steps per client round")
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--out", help="write the results (JSON list) here")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_step.py needs a CUDA device (or --device cpu with --arch tiny-llama)")
    import peft
    import transformers

    header = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    print(json.dumps(header))
    results = []
    for name in args.arch:
        result = {**header, **bench(name, args)}
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
