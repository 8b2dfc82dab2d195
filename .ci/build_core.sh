#!/usr/bin/env bash
# Builds the torch-free CUDA core with CMake (archs 80;90a, no Python module), installs it to a
# temporary prefix, then builds and runs the examples/cpp consumer against that prefix through
# find_package(perfkern). Without a GPU the consumer reports "no CUDA device" and exits 0.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
archs="${PERFKERN_CUDA_ARCHS:-80;90a}"
jobs="${MAX_JOBS:-2}"
work="$(mktemp -d "${TMPDIR:-/tmp}/perfkern-core.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

run() {
  echo "+ $*"
  "$@"
}

echo "== perfkern core: configure (archs ${archs}) =="
run cmake -S "${repo}" -B "${work}/build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DPERFKERN_BUILD_PYTHON=OFF \
  "-DPERFKERN_CUDA_ARCHS=${archs}" \
  "-DCMAKE_INSTALL_PREFIX=${work}/prefix"

echo "== perfkern core: build =="
start=${SECONDS}
run cmake --build "${work}/build" --parallel "${jobs}"
echo "core built in $((SECONDS - start)) s"

echo "== perfkern core: install =="
run cmake --install "${work}/build"

echo "== consumer (examples/cpp): configure + build against the installed package =="
run cmake -S "${repo}/examples/cpp" -B "${work}/example" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_PREFIX_PATH=${work}/prefix"
run cmake --build "${work}/example" --parallel "${jobs}"

echo "== consumer: run =="
run "${work}/example/perfkern_example"
echo "build_core: OK"
