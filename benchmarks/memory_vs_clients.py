"""Does the simulator's memory grow with the number of clients? (It should not.)

Runs the same short federated job with a population of 100 and of 10,000 clients (the
cross-device scale), each in a fresh process, on a random-weight Llama (about 25 M
parameters, so the base model dominates memory the way a real one does), and reports peak
resident memory (ru_maxrss) of each and the ratio large / small.

The question is about the *population*, so the work per round is held fixed: fixed-size
sampling with ``sampling.per_round = 5`` trains exactly 5 clients per round in both runs.
(Poisson sampling at rate 5/N would train about 5, but a different random number in each
run, mixing the per-round work into the comparison.) What grows with the population is only
per-client data (``--examples-per-client`` tiny examples each, at most the data set's
13,939 training texts in all), the sampler and the ledger's per-client charges.
Method dp-random-projection (no stage 1, whose warm-up visits every client), 2 rounds, local
noise. Each population runs ``--repeat`` times, alternating, and the median peak is used.

    python benchmarks/memory_vs_clients.py

The mechanism (one base model object shared by every client, only LoRA state swapped) is
asserted in tests/federated/test_simulator.py; this script measures its effect.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import machine, sig, write

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time, tempfile
import torch
from transformers import LlamaConfig, LlamaForCausalLM
sys.path.insert(0, "tests")
from conftest import make_tiny_tokenizer
from drencoder.config import load_config
from drencoder.federated.simulator import Simulator

clients, per_round, per_client = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=74, hidden_size=512, intermediate_size=1536,
    num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True))
cfg = load_config(preset="smoke", overrides=[f"clients={clients}", "rounds=2",
    "method=dp-random-projection", "sampling.scheme=fixed", f"sampling.per_round={per_round}",
    "eval.every=0", "eval.questions=4", f"data.examples_per_client={per_client}"])
start = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    summary = Simulator(cfg, out + "/run", model_and_tokenizer=(model, make_tiny_tokenizer()),
                        progress=False).run()
    rows = [json.loads(x) for x in open(out + "/run/metrics.jsonl")]
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"clients": clients, "peak_rss_mib": round(peak_kib / 1024, 1),
                  "params": sum(p.numel() for p in model.parameters()),
                  "trained_per_round": [len(r["participants"]) for r in rows
                                        if r["kind"] == "round"],
                  "seconds": round(time.perf_counter() - start, 1)}))
"""


def run_child(clients: int, per_round: int, per_client: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(clients), str(per_round), str(per_client)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--examples-per-client", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    info = machine()  # before the work: it records the load at the start
    runs = []
    for _ in range(args.repeat):
        for clients in (args.small, args.large):
            row = run_child(clients, args.per_round, args.examples_per_client)
            print(json.dumps(row), flush=True)
            runs.append(row)

    def peak(n: int) -> float:
        return round(statistics.median(r["peak_rss_mib"] for r in runs if r["clients"] == n), 1)

    result = {
        "benchmark": "memory_vs_clients",
        **info,
        "sampling": f"fixed, per_round={args.per_round}",
        "method": "dp-random-projection",
        "rounds": 2,
        "examples_per_client": args.examples_per_client,
        "runs": runs,
        "peak_rss_mib": {str(args.small): peak(args.small), str(args.large): peak(args.large)},
        "peak_rss_ratio": sig(peak(args.large) / peak(args.small), 4),
    }
    write("memory_vs_clients", result)


if __name__ == "__main__":
    main()
