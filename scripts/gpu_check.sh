#!/usr/bin/env bash
# One command for a fresh GPU machine, offline: build the extension, run every test (GPU ones included), build
# and run the C++ consumer, run the benchmarks, print a table and write bench/results/<device>-<date>.json
# (copied to $OUT when that is set).
#
#   bash scripts/gpu_check.sh [all|tests|bench|core]
#
# "tests" builds and tests, "bench" builds and benchmarks, "all" (default) does both: split them when one
# command has a time limit shorter than the whole run. "core" is the short check of the CUDA core alone: the
# tests that execute its kernels (every family: the 2:4 format and GEMMs, the weight gradient and the
# double-pruned copy, PERA, dendrite correlation; through the ops' cuda backend and through the launchers), the
# C++ training-step consumer, and the cuda provider of each family's benchmark. "tests" runs the same kernel
# tests first, then the rest of the suite.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
case "$stage" in all|tests|bench|core) ;; *) echo "usage: $0 [all|tests|bench|core]"; exit 2 ;; esac
export PYTHONUNBUFFERED=1 PERFKERN_BUILD_CUDA=1
out=${OUT:-bench/results}
mkdir -p "$out" bench/results
status=0

echo "== build"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 || exit 1
python3 -m perfkern info || exit 1

# The tests that execute the CUDA core's kernels (marker cuda_emulated: on this GPU here, in the emulator in CI).
core_tests=(tests/test_cuda_core_launchers.py tests/test_sparse24_cuda_kernels.py tests/test_sparse24.py
            tests/test_sparse24_linear.py tests/test_pera.py tests/test_dendrite.py)
# Each family's benchmark, for its cuda provider (and the baselines timed beside it).
core_bench=(bench/bench_sparse24_gemm.py bench/bench_sparse24_linear.py bench/bench_pera.py bench/bench_dendrite.py)

if [ "$stage" != bench ]; then
  echo "== tests: the CUDA core's kernels"
  python3 -m pytest "${core_tests[@]}" -m cuda_emulated -q -rs --junitxml="$out/junit-core.xml" 2>&1 | tail -40 \
    || status=1
  echo "== C++ consumers (the round trip, the training step)"
  flavours=(cuda)
  [ "$stage" = core ] || flavours=()
  bash .ci/build_core.sh "${flavours[@]}" >"$out/core_build.log" 2>&1 && grep -E "training step|round trip|build_core" \
    "$out/core_build.log" || { tail -30 "$out/core_build.log"; status=1; }
fi

if [ "$stage" = tests ] || [ "$stage" = all ]; then
  echo "== tests: the rest"
  python3 -m pytest tests/ -m "not cuda_emulated" -q -rs --junitxml="$out/junit.xml" 2>&1 | tail -40 || status=1
fi

if [ "$stage" = core ]; then
  echo "== benchmarks: the CUDA core's providers"
  python3 -m pytest "${core_bench[@]}" --benchmark-only -q -k "cuda" --benchmark-json="$out/core-bench.json" 2>&1 \
    | tail -5 || status=1
  [ -f "$out/core-bench.json" ] && python3 bench/report.py "$out/core-bench.json"
fi

if [ "$stage" = bench ] || [ "$stage" = all ]; then
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
