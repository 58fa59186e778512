"""How much faster is a client's local training, and scoring, on the prefix-cached top?

On a real model (default: the embedded SmolLM2-135M-Instruct, CPU) with LoRA r = 8 on
q, k, v, o of the top layer only (``lora.layers = "top:1"``) and the letters loss, each
repetition times, back to back in a rotating order:

- one client's ``local_update`` (``--steps`` steps of ``--batch`` real sentiment examples)
  through the full model (``model.prefix_cache = "off"``), through the cached top with
  every position of the last layer computed (``all_positions``, how the cache ran before
  the last layer was limited to the needed positions) and through the cached top as it
  runs now (``cached``: the last layer's query projection, output projection and MLP only
  at the labelled positions); states already cached: what every round after the first
  costs;
- scoring ``--questions`` held-out questions through each.

Reported: the median over repetitions of full / cached and all_positions / cached, per
task, and the one-time cost of computing the prefix states (seconds per sequence). All
paths train the same adapter from the same state on the same batches; the updates agree to
float rounding (checked).

    python benchmarks/prefix_cache.py --repeat 3
    python benchmarks/prefix_cache.py --model gemma3-270m --repeat 3
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, median_ratio, sig, write

from drencoder.config import load_config
from drencoder.evaluation import score_multiple_choice
from drencoder.federated.client.update import local_update
from drencoder.federated.workload import build_workload
from drencoder.lora import (
    PrefixCachedLM,
    TrainSettings,
    adapter_layout,
    attach_lora,
    get_adapter_state,
    prefix_cached,
)
from drencoder.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--questions", type=int, default=64)
    args = parser.parse_args()
    info = machine()
    config = load_config(
        overrides=[
            f"model.name={args.model}",
            "lora.layers=top:1",
            "data.loss_on=letters",
            "data.max_length=64",
            "data.max_chars=64",
            "clients=8",
            f"data.examples_per_client={args.steps * args.batch}",
            f"eval.questions={args.questions}",
        ]
    )
    base, tokenizer = load_model(args.model, progress=False)
    model = attach_lora(base, config.lora, seed=0)
    layout = adapter_layout(model)
    state = get_adapter_state(model)
    workload = build_workload(config, tokenizer)
    cached = prefix_cached(model, mode="memory")
    assert isinstance(cached, PrefixCachedLM)
    all_positions = PrefixCachedLM(model, start=cached.start, store=cached.store, needed_only=False)
    lms = {"full": model, "all_positions": all_positions, "cached": cached}
    rows = [ex["input_ids"] for client in workload.clients for ex in client]
    started = time.perf_counter()
    cached.warm(rows)
    per_sequence = (time.perf_counter() - started) / len(rows)
    settings = TrainSettings(lr=1e-3, steps=args.steps)
    train: dict[str, list[float]] = {name: [] for name in lms}
    score: dict[str, list[float]] = {name: [] for name in lms}
    agree = []
    for rep in range(args.repeat):
        batches = workload.batches(
            rep % len(workload.clients),
            steps=args.steps,
            batch_size=args.batch,
            generator=torch.Generator().manual_seed(rep),
        )
        names = list(lms)
        order = names[rep % 3 :] + names[: rep % 3]
        updates = {}
        for name in order:
            t = time.perf_counter()
            updates[name], _ = local_update(
                lms[name], state, batches, settings, layout=layout, seed=rep
            )
            train[name].append(time.perf_counter() - t)
        for name in ("all_positions", "cached"):
            diff = updates["full"] - updates[name]
            agree.append(float(diff.norm() / updates["full"].norm()))
        for name in order:
            lm = lms[name]
            t = time.perf_counter()
            score_multiple_choice(
                lm,
                tokenizer,
                workload.eval_items,
                fmt=workload.fmt,
                batch_size=16,
                progress=False,
            )
            score[name].append(time.perf_counter() - t)
    result = {
        "benchmark": "prefix_cache",
        **info,
        "model": args.model,
        "adapted": "LoRA r=8 on q,k,v,o of the top layer",
        "local_steps": args.steps,
        "batch": args.batch,
        "questions": args.questions,
        "repeat": args.repeat,
        "train_seconds": {k: [sig(x, 4) for x in v] for k, v in train.items()},
        "score_seconds": {k: [sig(x, 4) for x in v] for k, v in score.items()},
        "train_speedup": sig(median_ratio(train["full"], train["cached"]), 4),
        "score_speedup": sig(median_ratio(score["full"], score["cached"]), 4),
        "train_speedup_over_all_positions": sig(
            median_ratio(train["all_positions"], train["cached"]), 4
        ),
        "score_speedup_over_all_positions": sig(
            median_ratio(score["all_positions"], score["cached"]), 4
        ),
        "prefix_seconds_per_sequence": sig(per_sequence, 4),
        "update_relative_difference_max": sig(max(agree), 3),
    }
    print(result)
    write("prefix_cache" if args.model == "smollm2-135m" else f"prefix_cache_{args.model}", result)


if __name__ == "__main__":
    main()
