#!/usr/bin/env bash
# The CPU benchmark of record, in one command: the 2:4 CPU kernels at the CPU targets' shapes (4096x4096 and
# 11008x4096; M = 1, 8, 128; fp32 and bf16) against F.linear, the dense kernel of the same code and the read
# bandwidth floor, all measured in one run. Writes bench/results/cpu-<machine>-<date>.json and prints its table.
# Run it on a quiet machine (nothing else running): on a loaded one every ratio is noise.
#
#   bash scripts/cpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
machine=$(python3 - <<'PY'
import os, re
model = "cpu"
try:
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1] for l in f if l.startswith("model name")), model)
except OSError:
    pass
print(re.sub("[^a-z0-9]+", "-", f"{model} {os.cpu_count()}c".lower()).strip("-"))
PY
)
json="bench/results/cpu-${machine}-$(date +%Y-%m-%d).json"
mkdir -p bench/results
python3 -m perfkern info
PERFKERN_BENCH_CPU=full python3 -m pytest bench/bench_sparse24_cpu.py --benchmark-only -q -p no:randomly \
  --benchmark-json="$json"
python3 bench/report.py "$json"
echo "results: $json"
