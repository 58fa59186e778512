"""``drencoder codec-report``: how well each codec reconstructs real LoRA updates.

Runs DR-Encoder stage 1 for the configured federation (warm-up, statistics release, prior,
auto-encoder trained on prior samples only), then lets every client train ``local.steps``
steps from the initial adapter, as in round 1 of a run, and measures every codec at the
same latent size on those real updates and on fresh prior samples
(:mod:`drencoder.codecs.report`). The library does the work; this module wires it up.

Seeds come from the same named streams as ``drencoder run`` (``lora``, ``stage1``,
``projection``, ``data``, ``train``), so the adapter, the auto-encoder and the projection
are the ones a run with this configuration uses, and the real updates are drawn the way
its round-1 updates are. Prior samples for the report come from a stream of their own.
DR-Encoder's subspace options are built as :mod:`drencoder.federated.server.structured` builds
them (the sketch released from the round-1 updates, with noise from the report's own
stream); ``--rounds`` runs :func:`drencoder.federated.codec_trace.trace`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from drencoder.cli import argtypes
from drencoder.cli.options import add_config_arguments, config_from_arguments
from drencoder.codecs import IdentityCodec, RandomProjectionCodec, SubspaceCodec, train_autoencoder
from drencoder.codecs.bases import bases_from_vectors, random_bases
from drencoder.codecs.report import measure_codec, prior_fit
from drencoder.config import Architecture, RunConfig, to_dict
from drencoder.federated.codec_trace import energies, trace
from drencoder.federated.seeds import derive_seed, draw_seed, named_generator
from drencoder.federated.server import structured
from drencoder.federated.server.proxy import proxy_updates, proxy_workload
from drencoder.federated.server.stage1 import conv_stages_for, make_autoencoder
from drencoder.federated.simulator import run_stage1
from drencoder.federated.workload import build_workload, training_model
from drencoder.lora import adapter_layout, attach_lora, get_adapter_state, warmup_updates
from drencoder.models import load_model

DESCRIPTION = """\
Measure the update codecs on real LoRA updates. Runs DR-Encoder stage 1 (warm-up,
statistics release, prior, auto-encoder trained only on prior samples), then lets every
client train local.steps steps from the initial adapter (round 1 of a run) and reports,
for identity, random-projection and the auto-encoder at the same latent size k = d x
codec.compression_ratio: the relative reconstruction error ||u - Dec(Enc(u))|| / ||u||
and the cosine similarity (means over vectors) on the real updates and on fresh prior
samples, bytes per upload and encode/decode seconds per vector. An error of 1 is what
sending nothing achieves. DR-Encoder's structured codecs (codec.basis: random, proxy,
sketch, energy; history starts as random) are measured too, with the energy each keeps
(cos^2). --rounds N follows N rounds of a non-private trajectory and reports the energy
each codec keeps of every round's real updates. Uses the run configuration (--config,
--set, --preset).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "codec-report",
        help="reconstruction error of every codec on real LoRA updates",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument(
        "--synthetic",
        metavar="N",
        type=argtypes.number(lo=1, integer=True),
        default=8,
        help="fresh prior samples measured (at least the number of real updates; default 8)",
    )
    p.add_argument(
        "--other-architecture",
        action="store_true",
        help="also train and measure the other auto-encoder architecture (conv for mlp and "
        "vice versa) on the same prior",
    )
    p.add_argument(
        "--rounds",
        metavar="N",
        type=argtypes.number(lo=1, integer=True),
        default=None,
        help="also follow N rounds of a non-private trajectory and report, per round, the "
        "energy each codec keeps of that round's real updates (docs/codecs.md)",
    )
    p.add_argument(
        "--per-round",
        metavar="M",
        type=argtypes.number(lo=1, integer=True),
        default=16,
        help="with --rounds: clients drawn per round (default 16)",
    )
    p.add_argument(
        "--aggregate-noise",
        metavar="STD",
        type=argtypes.number(lo=0),
        default=0.0,
        help="with --rounds: std of Gaussian noise added to every latent coordinate of the "
        "mean the history codec is refreshed from (e.g. sigma*C/n of a central-noise run; "
        "default 0)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(func=run)


def real_updates(model, initial, workload, config: RunConfig, *, layout, progress: bool):
    """One update per client: ``local.steps`` steps from ``initial``, like round 1."""
    from tqdm.auto import tqdm

    data = named_generator(config.seed, "data")
    train = named_generator(config.seed, "train")
    out = []
    for client in tqdm(
        range(len(workload.clients)), desc="real updates", unit="client", disable=not progress
    ):
        batches = workload.batches(
            client, steps=config.local.steps, batch_size=config.data.batch_size, generator=data
        )
        seed = draw_seed(train)
        out += warmup_updates(model, initial, [batches], config.local, layout=layout, seed=seed)
    return torch.stack(out)


def compute(args: argparse.Namespace) -> dict:
    """The numbers ``drencoder codec-report`` prints, as a JSON-ready dict."""
    start = time.perf_counter()
    progress = not args.no_progress
    config = config_from_arguments(args)
    if args.other_architecture or config.codec.architecture is Architecture.CONV:
        conv_stages_for(config.codec.compression_ratio)  # refuse before the expensive part
    model, tokenizer = load_model(config.model.name, device=config.model.device, progress=progress)
    model = attach_lora(
        model, config.lora, seed=derive_seed(config.seed, "lora"), device=config.model.device
    )
    workload = build_workload(config, tokenizer)
    layout = adapter_layout(model, sent=config.lora.sent)
    initial = get_adapter_state(model)
    lm = training_model(model, config)  # the prefix-cached top where lora.layers allows
    setup_s = time.perf_counter() - start

    stage1 = run_stage1(
        lm,
        initial,
        workload,
        config,
        layout=layout,
        generator=named_generator(config.seed, "stage1"),
        progress=progress,
    )
    t0 = time.perf_counter()
    real = real_updates(lm, initial, workload, config, layout=layout, progress=progress)
    real_s = time.perf_counter() - t0
    generator = named_generator(config.seed, "codec-report")
    synthetic = stage1.sampler.sample(max(args.synthetic, real.shape[0]), generator=generator)

    d, ae = layout.dim, stage1.codec
    projection_seed = derive_seed(config.seed, "projection")
    codecs = [
        ("identity", IdentityCodec(input_dim=d)),
        (
            "random-projection",
            RandomProjectionCodec(
                input_dim=d,
                compression_ratio=config.codec.compression_ratio,
                chunk_size=config.codec.chunk_size,
                seed=projection_seed,
            ),
        ),
        ("autoencoder", ae),
    ]
    trained_here = {}
    if args.other_architecture:
        other_arch = next(a for a in Architecture if a is not config.codec.architecture)
        other = make_autoencoder(
            stage1.sampler, config.codec, generator=generator, architecture=other_arch
        ).to(ae.device)
        trained_here[other.name] = train_autoencoder(
            other,
            stage1.sampler,
            generator=generator,
            steps=config.codec.train_steps,
            lr=config.codec.lr,
            progress=progress,
        ).to_dict()
        codecs.append((other.name, other))

    structured_codecs = _structured_codecs(
        lm, initial, workload, config, tokenizer, layout=layout, real=real, stage1=stage1
    )
    codecs += [(f"subspace-{name}", codec) for name, codec in structured_codecs.items()]

    rows = []
    for name, codec in codecs:
        row = measure_codec(codec, name=name, real=real, synthetic=synthetic).to_dict()
        row["real"]["energy"] = energies(codec, real)
        if name == "random-projection":
            row["seed"] = projection_seed
        if name in trained_here:
            row["training"] = trained_here[name]
        rows.append(row)
    per_round = None
    if args.rounds:
        fixed = {"autoencoder": ae}
        fixed.update({k: v for k, v in structured_codecs.items() if k in ("sketch", "energy")})
        per_round = trace(
            lm,
            initial,
            workload,
            config,
            tokenizer,
            layout=layout,
            rounds=args.rounds,
            per_round=args.per_round,
            fixed=fixed,
            aggregate_noise=args.aggregate_noise,
            progress=progress,
        )
    return {
        "codecs": rows,
        "rounds": per_round,
        "per_round_clients": args.per_round if args.rounds else None,
        "aggregate_noise": args.aggregate_noise if args.rounds else None,
        "input_dim": d,
        "model": config.model.name,
        "updates": int(real.shape[0]),
        "synthetic_updates": int(synthetic.shape[0]),
        "update_norms": real.double().norm(dim=1).tolist(),
        "compression_ratio": config.codec.compression_ratio,
        "chunk_size": config.codec.chunk_size,
        "architecture": config.codec.architecture.value,
        "stage1": stage1.report,
        "prior_fit": prior_fit(stage1.sampler, real),
        "seconds": {
            "setup": setup_s,
            "stage1": stage1.report["seconds"],
            "real_updates": real_s,
            "total": time.perf_counter() - start,
        },
        "torch_threads": torch.get_num_threads(),
        "device": config.model.device,
        "config": to_dict(config),
    }


def _structured_codecs(
    lm, initial, workload, config: RunConfig, tokenizer, *, layout, real, stage1
) -> dict:
    """DR-Encoder's subspace options as a run would build them before round 1 (history is
    then random). The sketch is released from ``real`` (every client's update from the
    initial adapter, as in stage 1), clipped and noised with ``codec.sketch_*`` from a
    generator of the report's own; energy allocates by the stage-1 prior's block moments."""
    gen = named_generator(config.seed, "codec/0")
    dims = structured.latent_dims(layout, config)
    out = {"random": SubspaceCodec(layout=layout, bases=random_bases(layout, dims, generator=gen))}
    proxy = proxy_workload(config, workload, tokenizer)
    public = proxy_updates(
        lm,
        initial,
        proxy,
        config,
        layout=layout,
        generator=named_generator(config.seed, "proxy/0"),
    )
    bases, _ = bases_from_vectors(public, layout, dims, generator=gen)
    out["proxy"] = SubspaceCodec(layout=layout, bases=bases, source="proxy")
    release = structured.sketch_release(config)
    encoder = structured.sketch_encoder(layout, config.codec.sketch_width, generator=gen)
    noise = named_generator(config.seed, "codec-report/sketch")
    messages = [release.mechanism.privatize(encoder.encode(u), generator=noise) for u in real]
    bases, _ = structured.sketch_bases(messages, encoder, dims, generator=gen)
    out["sketch"] = SubspaceCodec(layout=layout, bases=bases, source="sketch")
    mean, std = (t.double() for t in stage1.sampler.block_moments())
    sizes = torch.tensor([b.size for b in layout.blocks], dtype=torch.float64)
    weights = (sizes * (mean**2 + std**2)).tolist()
    edims = structured.latent_dims(layout, config, weights=weights)
    out["energy"] = SubspaceCodec(
        layout=layout, bases=random_bases(layout, edims, generator=gen), source="energy"
    )
    return out


def _table(result: dict) -> str:
    s1 = result["stage1"]
    rel = s1["release"]
    noise = f"noise std {rel['noise_std']:.3g}" if rel["enabled"] else "no noise"
    lines = [
        f"codec report: model {result['model']}, d = {result['input_dim']:,}, "
        f"{result['updates']} real updates, {result['synthetic_updates']} prior samples",
        f"stage 1: {s1['clients']} clients x {s1['epochs']} epoch(s) of {s1['warmup_steps']} "
        f"steps; statistics release: {noise}; pooling {s1['pooling']}; "
        f"{result['architecture']} auto-encoder, {s1['training']['steps']} steps",
        "",
        f"  {'codec':<18} {'k':>9} {'bytes':>10}  {'real err':>9} {'real cos':>9}  "
        f"{'prior err':>9} {'prior cos':>9}  {'enc ms':>8} {'dec ms':>8}",
    ]
    for row in result["codecs"]:
        syn = row["synthetic"]
        lines.append(
            f"  {row['name']:<18} {row['latent_dim']:>9,} {row['bytes']:>10,}  "
            f"{row['real']['rel_error']:>9.4f} {row['real']['cosine']:>9.4f}  "
            f"{syn['rel_error']:>9.4f} {syn['cosine']:>9.4f}  "
            f"{row['encode_seconds'] * 1e3:>8.3f} {row['decode_seconds'] * 1e3:>8.3f}"
        )
    fit = result["prior_fit"]
    lines += [
        "",
        "  err = mean ||u - Dec(Enc(u))|| / ||u||  (0 exact, 1 = sending nothing)",
        "  cos = mean cosine(u, Dec(Enc(u)));  ms = milliseconds per vector (median)",
    ]
    if fit["std_ratio"] is not None:
        lines.append(
            f"  prior vs real updates, median over blocks: std ratio "
            f"{fit['std_ratio']['median']:.3g}, mean offset "
            f"{fit['mean_offset']['median']:.3g} real stds"
        )
    if result.get("rounds"):
        names = list(result["rounds"][0]["codecs"])
        lines += [
            "",
            f"  energy kept per round: mean over the round's {result['per_round_clients']} "
            "updates of cos²(u, Dec(Enc(u))); (mean update)",
            "  round  " + " ".join(f"{n:>22}" for n in names),
        ]
        for r in result["rounds"]:
            cells = [
                f"{r['codecs'][n]['energy']:>10.4f} ({r['codecs'][n]['mean_energy']:.4f})"
                for n in names
            ]
            lines.append(f"  {r['round']:>5}  " + " ".join(f"{c:>22}" for c in cells))
    lines.append(f"  total {result['seconds']['total']:.1f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = compute(args)
    print(json.dumps(result) if args.json else _table(result))
    return 0
