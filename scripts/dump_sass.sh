#!/usr/bin/env bash
# Writes the SASS of every CUDA source of the core, per architecture, with addresses and encodings stripped,
# so that two trees can be diffed: the emulated build must not change the device build.
#   scripts/dump_sass.sh OUT_DIR            # one file per source and arch: OUT_DIR/<source>.sm_<arch>.sass
#   diff -r OUT_BEFORE OUT_AFTER            # identical when the device code did not change
# Needs nvcc; cuobjdump is taken from PATH or from triton's bundled copy.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: scripts/dump_sass.sh OUT_DIR}"
archs="${PERFKERN_CUDA_ARCHS:-80;90a}"
nvcc="${NVCC:-nvcc}"
cuobjdump="$(command -v cuobjdump || true)"
if [[ -z "${cuobjdump}" ]]; then
  cuobjdump="$(python3 -c 'import os, triton; print(os.path.dirname(triton.__file__))')/backends/nvidia/bin/cuobjdump"
fi
mkdir -p "${out}"
work="$(mktemp -d "${TMPDIR:-/tmp}/perfkern-sass.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

# The generated configuration header, as CMake writes it for the CUDA flavour.
mkdir -p "${work}/generated"
sed -e "s/@PERFKERN_BUILD_CUDA_ARCHS@/${archs}/" -e "s/@PERFKERN_BUILD_FLAVOR@/cuda/" \
  "${repo}/cmake/perfkern_build_config.h.in" >"${work}/generated/perfkern_build_config.h"

IFS=';' read -r -a arch_list <<<"${archs}"
for src in "${repo}"/csrc/*/*.cu; do
  name="$(basename "$(dirname "${src}")")_$(basename "${src}" .cu)"
  for arch in "${arch_list[@]}"; do
    cubin="${work}/${name}.sm_${arch}.cubin"
    # The flags of the CMake Release build (cmake/perfkern_cuda.cmake) that reach device code.
    "${nvcc}" -std=c++17 -O3 -DNDEBUG -cubin "-gencode=arch=compute_${arch},code=sm_${arch}" \
      -I"${repo}/csrc" -I"${repo}/csrc/include" -I"${work}/generated" -o "${cubin}" "${src}"
    # Keep the instructions and the function headers; drop addresses, encodings, and the per-file hash of
    # anonymous namespaces in kernel names.
    "${cuobjdump}" -sass "${cubin}" |
      sed -E -e 's@/\*[0-9a-f]{4,}\*/@@g' -e 's@/\* 0x[0-9a-f]+ \*/@@g' -e 's/[[:space:]]+$//' \
        -e 's/_GLOBAL__N__[0-9a-f]+_[0-9]+_[A-Za-z0-9_]+_cu_[0-9a-f]+/_GLOBAL__N__anon/g' |
      grep -v -E '^[[:space:]]*$|^Fatbin|code for sm_' \
        >"${out}/${name}.sm_${arch}.sass" || true
    echo "${name} sm_${arch}: $(grep -c ';' "${out}/${name}.sm_${arch}.sass") instructions"
  done
done
