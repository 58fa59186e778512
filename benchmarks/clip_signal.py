"""How much signal survives clipping? The clipped mean against the noise, for a choice of C.

DP averages clipped vectors and adds noise whose scale is σ·C. Clipping every vector to the
same norm changes their mean: when the vectors of two groups point in roughly opposite
directions and one group's are longer (here: reviews of the answer the model already
prefers have small gradients, the others large ones), clipping below their norms makes
the groups cancel and the clipped mean loses the direction of the true mean. This script
measures it on real data, at the start of training (the LoRA init of the run's seed):

- ``record``: the per-example gradients of one client's Poisson batch (the ``cross-silo``
  preset's record-level DP-SGD, or the preset and ``--set`` overrides given), clipped per
  example;
- ``client``: the updates of the ``demo`` preset's first clients (2 examples each, one SGD
  step of learning rate 1: the mean of their two gradients), clipped per client.

For each C: the norm of the clipped mean, its cosine with the unclipped mean (1 = the
direction survives), the norm of the noise the preset adds to that mean (σ calibrated as the
run does, over the d LoRA coordinates), and their ratio (signal-to-noise). Tuning C this way
reads the clients' training data: in a deployment do it on public or proxy data (or accept
that the choice of C is not covered by ε). Usage (a few minutes on 2 cores; ``--name``
names the results file):

    python benchmarks/clip_signal.py --clip-norms 0.25,0.5,1,1.5,2,3,5
    python benchmarks/clip_signal.py --name clip_signal_c05 --set privacy.clip_norm=0.5 ...
"""

from __future__ import annotations

import argparse
import math

import torch
from common import machine, sig, write

from drencoder.config import load_config
from drencoder.data import collate
from drencoder.federated.record import RecordDpSgd
from drencoder.federated.server import budget
from drencoder.federated.server.orchestration import FederatedServer
from drencoder.lora.per_example import per_example_gradients
from drencoder.lora.training import _prepare
from drencoder.mechanisms import clip_cosine


def calibrated_sigma(config, examples) -> float:
    return budget.calibrate_noise(config, None, examples=examples)


def rows_for(vectors: torch.Tensor, *, reference: torch.Tensor, noise_std, clip_norms) -> list:
    norms = vectors.norm(dim=1)
    out = []
    for c in clip_norms:
        mean = (vectors * torch.clamp(c / norms, max=1.0)[:, None]).mean(0)
        noise = noise_std(c) * math.sqrt(vectors.shape[1])
        out.append(
            {
                "clip_norm": c,
                "clipped_fraction": sig(float((norms > c).float().mean())),
                "signal_norm": sig(float(mean.norm())),
                "cosine_with_unclipped_mean": sig(clip_cosine(reference, mean)),
                "noise_norm": sig(noise),
                "signal_to_noise": sig(float(mean.norm()) / noise),
            }
        )
    return out


def quantiles(x: torch.Tensor) -> dict:
    q = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9]))
    return {"p10": sig(float(q[0])), "median": sig(float(q[1])), "p90": sig(float(q[2]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-norms", default="0.25,0.5,1,1.5,2,3,5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="cross-silo")
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--clients", type=int, default=128, help="demo clients measured")
    parser.add_argument("--name", default="clip_signal")
    parser.add_argument("--out-dir", default="runs/clip-signal")
    args = parser.parse_args()
    clip_norms = [float(c) for c in args.clip_norms.split(",")]
    info = machine()

    silo = load_config(preset=args.preset, overrides=[f"seed={args.seed}", *args.extra])
    server = FederatedServer(silo, f"{args.out_dir}/record", progress=False)
    q = RecordDpSgd.from_config(silo, 1.0).sample_rate(len(server.workload.clients[0]))
    batch = server.workload.poisson_batches(
        0, steps=1, rate=q, generator=torch.Generator().manual_seed(args.seed)
    )[0]
    per_example, _ = per_example_gradients(server.lm, _prepare(batch, "cpu"), layout=server.layout)
    reference = per_example.mean(0)
    b = silo.data.batch_size
    sigma_record = calibrated_sigma(silo, server.example_counts)
    record = rows_for(
        per_example,
        reference=reference,
        # per client: σC on the sum of the clipped gradients, divided by the expected batch
        noise_std=lambda c: sigma_record * c / b,
        clip_norms=clip_norms,
    )

    demo = load_config(preset="demo", overrides=[f"seed={args.seed}"])
    cross_device = FederatedServer(demo, f"{args.out_dir}/client", progress=False)
    updates = torch.stack(
        [
            per_example_gradients(
                cross_device.lm,
                _prepare(collate(examples, pad_token_id=pad), "cpu"),
                layout=cross_device.layout,
            )[0].mean(0)
            for examples, pad in (
                (c, cross_device.workload.pad_token_id)
                for c in cross_device.workload.clients[: args.clients]
            )
        ]
    )
    n = budget.expected_clients(demo)
    sigma_client = calibrated_sigma(demo, None)
    client = rows_for(
        updates,
        reference=updates.mean(0),
        # central noise σC on the sum of n clipped updates, divided by n
        noise_std=lambda c: sigma_client * c / n,
        clip_norms=clip_norms,
    )
    write(
        args.name,
        {
            "benchmark": "clip_signal",
            **info,
            "model": silo.model.name,
            "seed": args.seed,
            "record": {
                "preset": args.preset,
                "overrides": args.extra,
                "lora_dim": server.layout.dim,
                "batch": per_example.shape[0],
                "noise_multiplier": sig(sigma_record),
                "per_example_gradient_norm": quantiles(per_example.norm(dim=1)),
                "unclipped_mean_norm": sig(float(reference.norm())),
                "by_clip_norm": record,
            },
            "client": {
                "preset": "demo",
                "lora_dim": cross_device.layout.dim,
                "clients_measured": len(updates),
                "clients_per_round": n,
                "noise_multiplier": sig(sigma_client),
                "update_norm": quantiles(updates.norm(dim=1)),
                "unclipped_mean_norm": sig(float(updates.mean(0).norm())),
                "by_clip_norm": client,
            },
        },
    )


if __name__ == "__main__":
    main()
