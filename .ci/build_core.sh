#!/usr/bin/env bash
# Builds the torch-free core with CMake (no Python module) and installs it to a temporary prefix, then
# builds and runs the examples/cpp consumer against that prefix through find_package(perfkern). The core is
# built three times: the CUDA flavour (archs 80;90a), the emulated flavour (PERFKERN_EMULATE=ON: the CUDA
# kernels executed on the CPU) and the CPU-only flavour (PERFKERN_CUDA=OFF); the last two as on a machine
# without the CUDA toolkit. The consumer runs the CPU 2:4 product in every flavour. Without a GPU the CUDA
# consumer reports "no CUDA device" and exits 0; against the emulated core the consumer's round trip runs on the
# emulated device, on host memory. A second consumer, perfkern_train_step, runs one training step of a 2:4 layer
# with a PERA adapter and a dendrite update through the header only, checked against its own reference: on the
# emulated device always, on a GPU when there is one.
#   .ci/build_core.sh [FLAVOUR...]    # cuda, emulated, cpu (default: all three)
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

build_and_consume() {
  local flavor="$1"
  shift
  echo "== perfkern core (${flavor}): configure =="
  run cmake -S "${repo}" -B "${work}/build-${flavor}" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DPERFKERN_BUILD_PYTHON=OFF \
    "-DCMAKE_INSTALL_PREFIX=${work}/prefix-${flavor}" "$@"

  echo "== perfkern core (${flavor}): build =="
  local start=${SECONDS}
  run cmake --build "${work}/build-${flavor}" --parallel "${jobs}"
  echo "core built in $((SECONDS - start)) s"

  echo "== perfkern core (${flavor}): install =="
  run cmake --install "${work}/build-${flavor}"

  echo "== consumer (examples/cpp) against the ${flavor} package: configure + build + run =="
  run cmake -S "${repo}/examples/cpp" -B "${work}/example-${flavor}" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    "-DCMAKE_PREFIX_PATH=${work}/prefix-${flavor}"
  run cmake --build "${work}/example-${flavor}" --parallel "${jobs}"
  local out
  out="$("${work}/example-${flavor}/perfkern_example")"
  echo "${out}"
  grep -q "(${flavor} build" <<<"${out}"
  grep -q "CPU 2:4 product OK" <<<"${out}"
  if [[ "${flavor}" == emulated ]]; then
    grep -q "round trip OK" <<<"${out}"
  fi

  echo "== training step (examples/cpp/train_step.cpp) against the ${flavor} package =="
  local step
  step="$("${work}/example-${flavor}/perfkern_train_step")"
  echo "${step}"
  # It must run wherever there is a device: the emulated one always, a GPU when the machine has one.
  if [[ "${flavor}" == emulated ]] || ! grep -q "training step skipped" <<<"${step}"; then
    grep -q "training step OK" <<<"${step}"
  fi
}

flavors=("$@")
if [[ ${#flavors[@]} -eq 0 ]]; then
  flavors=(cuda emulated cpu)
fi
for flavor in "${flavors[@]}"; do
  case "${flavor}" in
    cuda) build_and_consume cuda -DPERFKERN_CUDA=ON "-DPERFKERN_CUDA_ARCHS=${archs}" ;;
    # The emulated and CPU-only flavours must configure and build with no CUDA toolkit in sight: hide nvcc.
    emulated) build_and_consume emulated -DPERFKERN_EMULATE=ON -DCMAKE_CUDA_COMPILER=/nonexistent ;;
    cpu) build_and_consume cpu -DPERFKERN_CUDA=OFF -DCMAKE_CUDA_COMPILER=/nonexistent ;;
    *) echo "unknown flavour '${flavor}' (cuda, emulated, cpu)" >&2; exit 2 ;;
  esac
done
echo "build_core: OK (${flavors[*]})"
