"""Does the simulator's memory grow with the number of clients? (It should not.)

Runs the same short federated job with 2 and with 16 clients, each in a fresh process, on a
random-weight Llama (about 30 M parameters, so the base model dominates memory the way a
real one does) and prints one JSON line per run plus the ratio of peak resident memory:

    .venv/bin/python benchmarks/memory_vs_clients.py

The mechanism (one base model object shared by every client, only LoRA state swapped) is
asserted in tests/federated/test_simulator.py; this script measures its effect.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, tempfile
import torch
from transformers import LlamaConfig, LlamaForCausalLM
sys.path.insert(0, "tests")
from conftest import make_tiny_tokenizer
from drencoder.config import load_config
from drencoder.federated.simulator import Simulator

clients = int(sys.argv[1])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=74, hidden_size=512, intermediate_size=1536,
    num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True))
cfg = load_config(preset="smoke", overrides=[f"clients={clients}", "rounds=2",
    "method=dp-random-projection", "eval.every=0", "eval.questions=4"])
start = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    Simulator(cfg, out + "/run", model_and_tokenizer=(model, make_tiny_tokenizer()),
              progress=False).run()
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"clients": clients, "peak_rss_mib": round(peak_kib / 1024, 1),
                  "params": sum(p.numel() for p in model.parameters()),
                  "seconds": round(time.perf_counter() - start, 1)}))
"""


def main() -> None:
    results = []
    for clients in (2, 16):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(clients)], capture_output=True, text=True, check=True
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row))
        results.append(row)
    ratio = results[1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
    print(json.dumps({"peak_rss_ratio_16_vs_2_clients": round(ratio, 3)}))


if __name__ == "__main__":
    main()
