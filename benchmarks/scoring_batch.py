"""How much does the scoring batch size (``eval.batch_size``) matter on a CPU?

A run scores its held-out questions before and after training through the prefix-cached
top (``demo`` preset: Gemma 3 270M, 1,000 questions). Most of that time is the output
head: a 262,144 × 640 matrix applied at the answer position of every question, read from
memory once per batch. Each repetition scores the same questions at every ``--batches``
size, back to back in a rotating order, with one torch thread and the prefix states
already cached; reported: seconds per size, the median ratio of each size to the largest,
and whether the sizes agree (the same predictions; the largest difference of a choice's
log-probability).

    python benchmarks/scoring_batch.py --repeat 3
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, median_ratio, sig, write

from drencoder.config import load_config
from drencoder.evaluation import score_multiple_choice
from drencoder.federated.workload import build_workload
from drencoder.lora import attach_lora, prefix_cached
from drencoder.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--batches", default="2,8,32")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine()
    sizes = [int(b) for b in args.batches.split(",")]
    config = load_config(preset=args.preset)
    base, tokenizer = load_model(config.model.name, progress=False)
    model = attach_lora(base, config.lora, seed=0)
    lm = prefix_cached(model, mode="memory")
    workload = build_workload(config, tokenizer)
    items = workload.eval_items

    def score(batch_size: int):
        return score_multiple_choice(
            lm,
            tokenizer,
            items,
            fmt=workload.fmt,
            exemplars=workload.exemplars,
            batch_size=batch_size,
            progress=False,
        )

    started = time.perf_counter()
    reference = score(max(sizes))  # also computes the prefix states, once
    first = time.perf_counter() - started
    seconds: dict[int, list[float]] = {b: [] for b in sizes}
    worst, disagree = 0.0, 0
    for rep in range(args.repeat):
        for b in sizes[rep % len(sizes) :] + sizes[: rep % len(sizes)]:
            t = time.perf_counter()
            result = score(b)
            seconds[b].append(time.perf_counter() - t)
            disagree += sum(
                p != q for p, q in zip(result.predictions, reference.predictions, strict=True)
            )
            worst = max(
                worst,
                max(
                    abs(x - y)
                    for a, r in zip(result.choice_logprobs, reference.choice_logprobs, strict=True)
                    for x, y in zip(a, r, strict=True)
                ),
            )
    largest = max(sizes)
    write(
        f"scoring_batch_{args.preset}",
        {
            "machine": info,
            "preset": args.preset,
            "model": config.model.name,
            "questions": len(items),
            "repeat": args.repeat,
            "first_call_seconds_with_prefix_states": sig(first, 4),
            "seconds": {str(b): [sig(x, 4) for x in v] for b, v in seconds.items()},
            f"ratio_to_batch_{largest}": {
                str(b): sig(median_ratio(seconds[b], seconds[largest]), 3) for b in sizes
            },
            "predictions_differing_from_the_largest_batch": disagree,
            "max_abs_choice_logprob_difference": sig(worst, 3),
        },
    )


if __name__ == "__main__":
    main()
