"""How many bytes does each method move per client and round on the embedded model?

For every method of docs/design.md §5 with the default run config (SmolLM2-135M-Instruct, LoRA
r = 8 on q,k,v,o, codec.compression_ratio = 1/64, chunk 4096): build the adapter layout the
method sends and the codec the simulator builds for it, and count what the simulator
counts in ``metrics.jsonl`` (float32 payloads; framing and wire compression not counted):

- uplink per client per round: ``codec.bytes_per_upload`` (latent_dim × 4);
- downlink per client per round: the global adapter in the method's layout (for
  ffa-lora-dp only ``lora_B``: ``lora_A`` is a seeded init every party regenerates);
- once per client (dr-encoder only): stage-1 statistics up (mean and std per LoRA matrix)
  and the encoder half of the auto-encoder down (the decoder stays on the server).

No training: the auto-encoder is built untrained for a synthetic prior (its size does not
depend on its weights). ``--run-dir`` cross-checks against a finished run's metrics.jsonl:

    python benchmarks/uplink_bytes.py [--run-dir runs/demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import machine, write

from drencoder.codecs import IdentityCodec, RandomProjectionCodec
from drencoder.config import Method, load_config
from drencoder.config.methods import CodecKind, spec_for
from drencoder.federated.server.stage1 import make_autoencoder
from drencoder.lora import adapter_layout, attach_lora
from drencoder.models import load_model
from drencoder.prior import BlockStatistics, PooledStatistics, PriorSampler
from drencoder.reporting.schema import load_metrics, rounds, stage1


def build_codec(kind: CodecKind, layout, codec_config):
    if kind is CodecKind.IDENTITY:
        return IdentityCodec(input_dim=layout.dim)
    if kind is CodecKind.PROJECTION:
        return RandomProjectionCodec(
            input_dim=layout.dim,
            compression_ratio=codec_config.compression_ratio,
            chunk_size=codec_config.chunk_size,
            seed=0,
        )
    n = len(layout.blocks)
    stats = BlockStatistics(layout=layout, means=torch.zeros(n), stds=torch.full((n,), 1e-3))
    sampler = PriorSampler(PooledStatistics.single(stats))
    return make_autoencoder(sampler, codec_config, generator=torch.Generator().manual_seed(0))


def encoder_bytes(codec) -> int:
    """What the simulator counts as sent down in stage 1: the codec state minus the decoder."""
    return sum(
        t.numel() * t.element_size() for k, t in codec.state_dict().items() if ".decoder." not in k
    )


def cross_check(run_dir: Path, rows: dict) -> dict:
    """Per-client bytes of a finished run, beside this script's numbers for its method."""
    method = load_config(run_dir / "config.toml").method.value
    metrics = load_metrics(run_dir / "metrics.jsonl")
    done = rounds(metrics)
    out = {
        "run_method": method,
        "rounds": len(done),
        "up_per_client_round": sorted(
            {m["bytes_up"] // len(m["participants"]) for m in done if m["participants"]}
        ),
        "down_per_client_round": sorted(
            {m["bytes_down"] // len(m["participants"]) for m in done if m["participants"]}
        ),
    }
    first = stage1(metrics)
    if first is not None:
        clients = first["clients"]
        out["stage1_up_per_client"] = first["bytes_up"] // clients
        out["stage1_down_per_client"] = first["bytes_down"] // clients
    row = rows[method]
    out["agrees"] = (
        out["up_per_client_round"] == [row["up_per_round"]]
        and out["down_per_client_round"] == [row["down_per_round"]]
        and out.get("stage1_up_per_client") == row.get("stage1_up_once")
        and out.get("stage1_down_per_client") == row.get("stage1_down_once")
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished run to cross-check against")
    args = parser.parse_args()

    info = machine()  # before the work: it records the load at the start
    defaults = load_config()
    base, _ = load_model(defaults.model.name, progress=False)
    model = attach_lora(base, defaults.lora, seed=0)  # shapes do not depend on train_a
    rows = {}
    for method in Method:
        cfg = load_config(overrides=[f"method={method.value}"])
        spec = spec_for(method)
        layout = adapter_layout(model, sent=spec.sent)
        codec = build_codec(spec.codec, layout, cfg.codec)
        row = {
            "codec": codec.name,
            "sent": spec.sent.value,
            "private": spec.private,
            "update_dim": layout.dim,
            "latent_dim": codec.latent_dim,
            "up_per_round": codec.bytes_per_upload,
            "down_per_round": layout.dim * 4,
        }
        if spec.stage1:
            row["stage1_up_once"] = 2 * len(layout.blocks) * cfg.stage1.epochs * 4
            row["stage1_down_once"] = encoder_bytes(codec)
        rows[method.value] = row
    full = rows[Method.DP_FEDAVG_LORA.value]["up_per_round"]
    for row in rows.values():
        row["up_vs_full_update"] = round(row["up_per_round"] / full, 6)

    result = {
        "benchmark": "uplink_bytes",
        **info,
        "model": defaults.model.name,
        "lora_rank": defaults.lora.rank,
        "target_modules": list(defaults.lora.target_modules),
        "compression_ratio": defaults.codec.compression_ratio,
        "chunk_size": defaults.codec.chunk_size,
        "bytes_per_value": 4,
        "methods": rows,
    }
    if args.run_dir:
        result["cross_check"] = cross_check(args.run_dir, rows)
    write("uplink_bytes", result)


if __name__ == "__main__":
    main()
