#!/usr/bin/env bash
# One command for a fresh GPU machine, offline: build the extension, run every test (GPU ones included), build
# and run the C++ consumer, run the benchmarks, print a table and write bench/results/<device>-<date>.json
# (copied to $OUT when that is set).
#
#   bash scripts/gpu_check.sh [all|tests|bench]
#
# "tests" builds and tests, "bench" builds and benchmarks, "all" (default) does both: split them when one
# command has a time limit shorter than the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
case "$stage" in all|tests|bench) ;; *) echo "usage: $0 [all|tests|bench]"; exit 2 ;; esac
export PYTHONUNBUFFERED=1 PERFKERN_BUILD_CUDA=1
out=${OUT:-bench/results}
mkdir -p "$out" bench/results
status=0

echo "== build"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 || exit 1
python3 -m perfkern info || exit 1

if [ "$stage" != bench ]; then
  echo "== tests"
  python3 -m pytest tests/ -q -rs --junitxml="$out/junit.xml" 2>&1 | tail -40 || status=1
  echo "== C++ consumer"
  bash .ci/build_core.sh >"$out/core_build.log" 2>&1 && tail -5 "$out/core_build.log" || { tail -30 "$out/core_build.log"; status=1; }
fi

if [ "$stage" != tests ]; then
  echo "== benchmarks"
  slug=$(python3 -c "import torch, re; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
  json="bench/results/${slug}-$(date +%Y-%m-%d).json"
  python3 -m pytest bench/ --benchmark-only -q --benchmark-json="$json" 2>&1 | tail -5 || status=1
  if [ -f "$json" ]; then
    python3 bench/report.py "$json"
    python3 bench/plot.py "$json" "${json%.json}.png" || status=1
    cp "$json" "${json%.json}.png" "$out/" 2>/dev/null || true
  fi
fi
exit $status
