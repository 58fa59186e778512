#!/usr/bin/env bash
# Every check this project runs on a CUDA machine, in one go, from the repository root:
# the simulator on the GPU (tests marked gpu) and the 7B step benchmark.
#   OUT=benchmarks/results bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu_info.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider tests/federated/test_cuda.py 2>&1 \
    | tee "$OUT/gpu_tests.txt"
python3 benchmarks/gpu_step.py --out "$OUT/gpu_step.json" 2>&1 | tee "$OUT/gpu_step.txt"
