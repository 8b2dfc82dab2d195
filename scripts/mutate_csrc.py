"""Proof that the emulated tests bite: break the CUDA kernels on purpose, one mutation at a time, and check that
the tests of the cuda backend fail on the emulated core (PERFKERN_EMULATE) for every one of them.

    python scripts/mutate_csrc.py                 # every mutation, then a table: mutation -> failing tests
    python scripts/mutate_csrc.py --rotate 1      # one of them, chosen by the commit (CI)
    python scripts/mutate_csrc.py --only mma-acc-swap --only bias-dropped
    python scripts/mutate_csrc.py --list

The emulated core is built once with CMake (flavour emulated, module _C_emu) in --build-dir; each mutation edits
one source, rebuilds what depends on it (ninja/make do only that), runs its tests against that build
(PERFKERN_EMULATE=<the built module>, a fixed PERFKERN_EMULATE_SEED) and restores the source, also on failure or
Ctrl-C (the next build then recompiles what the mutation touched). The unmutated build must pass the same tests
first. Exit status 1 when a mutation is not caught.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GEMM_TESTS = ("tests/test_sparse24_cuda_kernels.py",)
FORMAT_TESTS = ("tests/test_sparse24.py", "-m", "cuda_emulated")
# The training families (tile GEMM, weight gradient, PERA, dendrites): their tests through the cuda backend and
# the launchers' own.
_CORE = ("tests/test_cuda_core_launchers.py", "-m", "cuda_emulated", "-k")
TILE_TESTS = ("tests/test_pera.py", "tests/test_sparse24_linear.py", *_CORE, "pera or weight_grad")
WEIGHT_GRAD_TESTS = ("tests/test_sparse24_linear.py", *_CORE, "weight_grad or transpose")
PERA_TESTS = ("tests/test_pera.py", *_CORE, "pera")
DENDRITE_TESTS = ("tests/test_dendrite.py", *_CORE, "dendrite or correlation or candidate or state")


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    what: str
    tests: tuple[str, ...] = GEMM_TESTS


MUTATIONS = [
    Mutation(
        "mma-acc-swap",
        "csrc/sparse24/mma_layout.cuh",
        "p.n = (lane >> 2) + 8 * (c >> 1);\n  p.m = 2 * (lane & 3) + (c & 1);",
        "p.n = (lane >> 2) + 8 * (c & 1);\n  p.m = 2 * (lane & 3) + (c >> 1);",
        "mma.sp accumulator map (acc_pos): the row and column bits of c swapped",
    ),
    Mutation(
        "wgmma-acc-swap",
        "csrc/sparse24/wgmma_layout.cuh",
        "p.n = 16 * warp_in_wg + (lane >> 2) + 8 * (c >> 1);\n  p.m = 8 * (j >> 2) + 2 * (lane & 3) + (c & 1);",
        "p.n = 16 * warp_in_wg + (lane >> 2) + 8 * (c & 1);\n  p.m = 8 * (j >> 2) + 2 * (lane & 3) + (c >> 1);",
        "wgmma accumulator map (acc_pos): the row and column bits of c swapped",
    ),
    Mutation(
        "mma-wait-group",
        "csrc/sparse24/mm_kernel.cuh",
        "ptx::cp_async_wait_group<Cfg::kStages - 2>();",
        "ptx::cp_async_wait_group<Cfg::kStages - 1>();",
        "mma.sp kernel: cp.async.wait_group N+1 instead of N (a stage read before it landed)",
    ),
    Mutation(
        "wgmma-wait-group",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "ptx::cp_async_wait_group<kAhead - 1>();",
        "ptx::cp_async_wait_group<kAhead>();",
        "wgmma kernel: cp.async.wait_group N+1 instead of N",
    ),
    Mutation(
        "mma-no-syncthreads",
        "csrc/sparse24/mm_kernel.cuh",
        "ptx::cp_async_wait_group<Cfg::kStages - 2>();\n    __syncthreads();",
        "ptx::cp_async_wait_group<Cfg::kStages - 2>();",
        "mma.sp kernel: the main loop's __syncthreads removed",
    ),
    Mutation(
        "wgmma-no-syncthreads",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "ptx::fence_proxy_async_shared_cta();\n    __syncthreads();",
        "ptx::fence_proxy_async_shared_cta();",
        "wgmma kernel: the main loop's __syncthreads removed",
    ),
    Mutation(
        "mma-epilogue-no-syncthreads",
        "csrc/sparse24/mm_kernel.cuh",
        "  __syncthreads();\n  for (int v = threadIdx.x; v < Cfg::BM * (Cfg::BN / 8); v += Cfg::kThreads) {",
        "  for (int v = threadIdx.x; v < Cfg::BM * (Cfg::BN / 8); v += Cfg::kThreads) {",
        "mma.sp kernel: the barrier between staging the output tile and storing it removed",
    ),
    Mutation(
        "mma-stage-off-by-one",
        "csrc/sparse24/mm_kernel.cuh",
        "smem + (kt % Cfg::kStages) * Cfg::kStageBytes",
        "smem + ((kt + 1) % Cfg::kStages) * Cfg::kStageBytes",
        "mma.sp kernel: the stage computed on is off by one",
    ),
    Mutation(
        "wgmma-stage-off-by-one",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "static_cast<int>(kt % Cfg::kStages) * Cfg::kStageBytes",
        "static_cast<int>((kt + 1) % Cfg::kStages) * Cfg::kStageBytes",
        "wgmma kernel: the stage computed on is off by one",
    ),
    Mutation(
        "wgmma-in-flight-depth",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "ptx::wgmma_wait_group_sync_aligned<1>();",
        "ptx::wgmma_wait_group_sync_aligned<2>();",
        "wgmma kernel: two wgmma groups left in flight, so a stage is refilled while a wgmma still reads it",
    ),
    Mutation(
        "mma-selector-flipped",
        "csrc/sparse24/mm_kernel.cuh",
        "mma_sp<T, 0>(acc[0][jm], af[0], bf, e);\n          mma_sp<T, 1>(acc[1][jm], af[1], bf, e);",
        "mma_sp<T, 1>(acc[0][jm], af[0], bf, e);\n          mma_sp<T, 0>(acc[1][jm], af[1], bf, e);",
        "mma.sp kernel: the sparsity selectors of the two m16 tiles exchanged",
    ),
    Mutation(
        "wgmma-meta-slot",
        "csrc/sparse24/wgmma_layout.cuh",
        "s.word = 4 * (lane >> 2) + 2 * (warp_in_wg & 1) + (lane & 1);",
        "s.word = 4 * (lane >> 2) + 2 * ((warp_in_wg + 1) & 1) + (lane & 1);",
        "wgmma kernel: each warp loads the metadata word of the other selector half",
    ),
    Mutation(
        "wgmma-k-tail-pad",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "make_uint4(kPadMetaWord, kPadMetaWord, kPadMetaWord, kPadMetaWord)",
        "make_uint4(kPadMeta, kPadMeta, kPadMeta, kPadMeta)",
        "wgmma kernel: K-tail padding metadata 0x00004444 (rows g + 8 get the invalid nibble 0b0000)",
    ),
    Mutation(
        "n-tail-pad",
        "csrc/sparse24/mma_layout.cuh",
        "  if (row >= rows) {\n    return kPadMeta;",
        "  if (row >= rows) {\n    return 0;",
        "meta_to_mma: rows past N padded with the invalid metadata 0 instead of (0, 1)",
    ),
    Mutation(
        "mma-out-stride",
        "csrc/sparse24/mm_kernel.cuh",
        "uint16_t* dst = a.out + m * a.out_row_stride + n;",
        "uint16_t* dst = a.out + m * a.x_row_stride + n;",
        "mma.sp kernel: the output row stride replaced by the input's",
    ),
    Mutation(
        "wgmma-out-stride",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "uint16_t* dst = a.out + m * a.out_row_stride + n;",
        "uint16_t* dst = a.out + m * a.x_row_stride + n;",
        "wgmma kernel: the output row stride replaced by the input's",
    ),
    Mutation(
        "mma-bias-dropped",
        "csrc/sparse24/mm_kernel.cuh",
        "from_float<T>(acc[i][jm][c] + bias[i][c >> 1])",
        "from_float<T>(acc[i][jm][c])",
        "mma.sp kernel: bias dropped",
    ),
    Mutation(
        "wgmma-bias-dropped",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "mma::from_float<T>(acc[j] + bias[(j & 3) >> 1])",
        "mma::from_float<T>(acc[j])",
        "wgmma kernel: bias dropped",
    ),
    Mutation(
        "wgmma-no-proxy-fence",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "    ptx::fence_proxy_async_shared_cta();\n",
        "",
        "wgmma kernel: fence.proxy.async between the cp.async data and the wgmma removed",
    ),
    Mutation(
        "wgmma-no-swizzle",
        "csrc/sparse24/wgmma_layout.cuh",
        "return row * kRowBytes + ((chunk ^ (row & 7)) << 4);",
        "return row * kRowBytes + (chunk << 4);",
        "wgmma kernel: tiles stored unswizzled while the descriptors say 128-byte swizzle",
    ),
    Mutation(
        "wgmma-unaligned-atoms",
        "csrc/sparse24/mm_wgmma_kernel.cuh",
        "const uint32_t aligned = (raw + kAtomBytes - 1) & ~static_cast<uint32_t>(kAtomBytes - 1);",
        "const uint32_t aligned = raw;",
        "wgmma kernel: dynamic shared memory not aligned to the 1024-byte swizzle atoms",
    ),
    Mutation(
        "mma-ldmatrix-rows",
        "csrc/sparse24/mma_layout.cuh",
        "p.row = row0 + (lane & 7) + 8 * (j & 1);\n  p.chunk = 2 * step + (j >> 1);",
        "p.row = row0 + (lane & 7) + 8 * (j >> 1);\n  p.chunk = 2 * step + (j & 1);",
        "mma.sp kernel: ldmatrix of A reads its four 8x8 matrices in the wrong order",
    ),
    Mutation(
        "format-grid-stride",
        "csrc/sparse24/sparse24.cuh",
        "static_cast<int64_t>(gridDim.x) * blockDim.x, rows, chunks_per_row, body);",
        "2 * static_cast<int64_t>(gridDim.x) * blockDim.x, rows, chunks_per_row, body);",
        "format kernels: the grid-stride loop steps twice the grid (half the chunks of a second turn skipped)",
    ),
    Mutation(
        "compress-ties",
        "csrc/sparse24/sparse24.cuh",
        "const uint32_t b01 = m[0] >= m[1]",
        "const uint32_t b01 = m[0] > m[1]",
        "compress: a tie between entries 0 and 1 of a group goes to the higher index",
        FORMAT_TESTS,
    ),
    Mutation(
        "decompress-swapped",
        "csrc/sparse24/sparse24.cuh",
        "p == i1 ? values[2 * g + 1] : (p == i0 ? values[2 * g] : Bits(0))",
        "p == i1 ? values[2 * g] : (p == i0 ? values[2 * g + 1] : Bits(0))",
        "decompress: the two kept values of a group exchanged",
        FORMAT_TESTS,
    ),
    Mutation(
        "tile-b-fragments-swapped",
        "csrc/common/tile_gemm.cuh",
        "mma(acc.v[mi][2 * nj], af[mi], bf[0], bf[1]);\n          mma(acc.v[mi][2 * nj + 1], af[mi], bf[2], bf[3]);",
        "mma(acc.v[mi][2 * nj], af[mi], bf[2], bf[3]);\n          mma(acc.v[mi][2 * nj + 1], af[mi], bf[0], bf[1]);",
        "tile GEMM: the B fragments of a warp's two n8 tiles exchanged",
        TILE_TESTS,
    ),
    Mutation(
        "tile-trans-a-matrices",
        "csrc/common/tile_gemm.cuh",
        "ta + (ks + i + 8 * (j >> 1)) * kAPitch + m0 + 8 * (j & 1);",
        "ta + (ks + i + 8 * (j & 1)) * kAPitch + m0 + 8 * (j >> 1);",
        "tile GEMM: ldmatrix.trans of an A operand stored along its rows reads its four matrices in the wrong order",
        TILE_TESTS,
    ),
    Mutation(
        "tile-no-syncthreads",
        "csrc/common/tile_gemm.cuh",
        "      stash(smem + ((kb + 1) & 1) * Math::kStageBytes);\n    }\n    __syncthreads();",
        "      stash(smem + ((kb + 1) & 1) * Math::kStageBytes);\n    }",
        "tile GEMM: the main loop's barrier removed (a stage written while another warp reads it)",
        TILE_TESTS,
    ),
    Mutation(
        "weight-grad-gather-index",
        "csrc/sparse24/weight_grad.cuh",
        "v[2 * g + 1] = src[4 * g + ((nib >> 2) & 3u)];",
        "v[2 * g + 1] = src[4 * g + (nib & 3u)];",
        "weight gradient: the second kept column of a group gathered from the first one's position",
        WEIGHT_GRAD_TESTS,
    ),
    Mutation(
        "weight-grad-no-accumulate",
        "csrc/sparse24/weight_grad.cuh",
        "dst[e] = a.accumulate ? dst[e] + v[e] : v[e];",
        "dst[e] = v[e];",
        "weight gradient: accumulate-into ignored on the element-wise fp32 path",
        WEIGHT_GRAD_TESTS,
    ),
    Mutation(
        "transpose-prune-values-swapped",
        "csrc/sparse24/transpose_prune.cu",
        "? __ldg(pair + 1) : (pos == (nib & 3u) ? __ldg(pair) : Bits(0));",
        "? __ldg(pair) : (pos == (nib & 3u) ? __ldg(pair + 1) : Bits(0));",
        "double-pruned copy: the two kept values of a group of Ws exchanged while decoding a column",
        WEIGHT_GRAD_TESTS,
    ),
    Mutation(
        "pera-cross-pairs",
        "csrc/pera/pera.cuh",
        "j = row + (p - start(row)) + (mode == PERFKERN_PERA_CROSS ? 1 : 0);",
        "j = row + (p - start(row));",
        "PERA: cross-mode pairs decoded as full-mode ones (i = j allowed)",
        PERA_TESTS,
    ),
    Mutation(
        "pera-db-fold-one-side",
        "csrc/pera/pera.cuh",
        "          row[i] += v * bt[j];\n          row[j] += v * bt[i];",
        "          row[i] += v * bt[j];",
        "PERA backward: dB^ of a pair folded into dB[:, i] only",
        PERA_TESTS,
    ),
    Mutation(
        "pera-split-overlap",
        "csrc/pera/pera.cuh",
        "const int64_t m_end = m_begin + a.rows_a < a.m ? m_begin + a.rows_a : a.m;",
        "const int64_t m_end = m_begin + 2 * a.rows_a < a.m ? m_begin + 2 * a.rows_a : a.m;",
        "PERA backward: the splits of the dA reduction overlap (rows counted twice)",
        PERA_TESTS,
    ),
    Mutation(
        "dendrite-chan-weight",
        "csrc/dendrite/dendrite.cuh",
        "const float weight = count * frac;",
        "const float weight = frac;",
        "dendrite correlation: Chan's merge without the n r / (n + r) weight of the mean shift",
        DENDRITE_TESTS,
    ),
    Mutation(
        "dendrite-warps-no-barrier",
        "csrc/dendrite/correlation.cu",
        "  __syncthreads();\n  if (warp != 0) {\n    return;",
        "  if (warp != 0) {\n    return;",
        "dendrite correlation: warp 0 merges the other warps' moments without waiting for them",
        DENDRITE_TESTS,
    ),
    Mutation(
        "dendrite-split-rows",
        "csrc/dendrite/correlation.cu",
        "const float rows = static_cast<float>(a.p - first < a.rows_per_split ? a.p - first : a.rows_per_split);",
        "const float rows = static_cast<float>(a.rows_per_split);",
        "dendrite correlation: the last split merged as if it were full",
        DENDRITE_TESTS,
    ),
    Mutation(
        "dendrite-cascade-nan",
        "csrc/dendrite/grad.cu",
        "if (cascade && !finite(as_float(t))) {",
        "if (false && !finite(as_float(t))) {",
        "dendrite gradient: a NaN error's candidates no longer zeroed in the Cascade-Correlation gradient",
        DENDRITE_TESTS,
    ),
    Mutation(
        "dendrite-state-epoch-count",
        "csrc/dendrite/state.cu",
        "a.f_epoch = cumulative(p.epoch.count);",
        "a.f_epoch = cumulative(p.running.count);",
        "dendrite state: the epoch statistics weighted by the running count",
        DENDRITE_TESTS,
    ),
]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, **kw)


def configure(build_dir: Path) -> None:
    if (build_dir / "CMakeCache.txt").exists():
        return
    cmake = shutil.which("cmake")
    if cmake is None:
        sys.exit("mutate_csrc: cmake is not on PATH")
    import pybind11

    args = [
        cmake, "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", "-DPERFKERN_EMULATE=ON",
        "-DPERFKERN_BUILD_PYTHON=ON", "-DPERFKERN_INSTALL=OFF", f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPERFKERN_PYTHON_OUTPUT_DIR={build_dir / 'python'}",
    ]  # fmt: skip
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    result = _run(args)
    if result.returncode != 0:
        sys.exit(f"mutate_csrc: configure failed\n{result.stdout}{result.stderr}")


def build(build_dir: Path, jobs: int) -> tuple[Path | None, str]:
    """The built _C_emu module, or None and the compiler's output."""
    result = _run(["cmake", "--build", str(build_dir), "--target", "_C_emu", "--parallel", str(jobs)])
    if result.returncode != 0:
        return None, result.stdout + result.stderr
    built = sorted(p for p in (build_dir / "python").glob("_C_emu.*") if p.suffix == ".so")
    return built[0], ""


def run_tests(module: Path, tests: tuple[str, ...], seed: str) -> tuple[int, list[str], str]:
    """pytest's exit status, the failing test ids, and its summary line (or how the process died)."""
    env = {**os.environ, "PERFKERN_EMULATE": str(module), "PERFKERN_EMULATE_SEED": seed}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *tests, "-v", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, text=True, capture_output=True,
    )  # fmt: skip
    failed = re.findall(r"^(\S+::\S+) FAILED", result.stdout, re.M)
    if result.returncode < 0:
        # A mutated kernel that writes outside its buffers can bring the whole process down: the test that was
        # running is the last one pytest announced without a result.
        started = re.findall(r"^(\S+::\S+) ?(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)?", result.stdout, re.M)
        running = [name for name, status in started if not status]
        crashed = running[-1] if running else "an unknown test"
        failed.append(crashed)
        return result.returncode, failed, f"the test process died (signal {-result.returncode}) in {crashed}"
    lines = result.stdout.strip().splitlines()
    return result.returncode, failed, lines[-1].strip("= ") if lines else result.stderr[-500:]


def failing_summary(failed: list[str]) -> str:
    """'39: test_a x37 (e.g. [contiguous-M33-N64-K32-torch.float16-mma_sp]), test_b x2' from pytest's node ids."""
    by_test: dict[str, list[str]] = {}
    for node in failed:
        name, _, params = node.split("::", 1)[1].partition("[")
        by_test.setdefault(name, []).append(params.rstrip("]"))
    parts = [
        f"{name} x{len(params)}" + (f" (e.g. [{params[0]}])" if params[0] else "") for name, params in by_test.items()
    ]
    return f"{len(failed)}: " + ", ".join(parts) if failed else ""


def apply(m: Mutation) -> str:
    path = ROOT / m.path
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        sys.exit(f"mutate_csrc: {m.name}: expected the text to mutate once in {m.path}, found it {count} times")
    path.write_text(text.replace(m.old, m.new))
    return text


def rotation(count: int) -> list[Mutation]:
    """`count` mutations chosen by the current commit, so that successive CI runs cover all of them."""
    head = _run(["git", "rev-parse", "HEAD"]).stdout.strip() or str(time.time())
    start = int(hashlib.sha256(head.encode()).hexdigest(), 16) % len(MUTATIONS)
    return [MUTATIONS[(start + i) % len(MUTATIONS)] for i in range(min(count, len(MUTATIONS)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "mutate")
    parser.add_argument("--only", action="append", default=[], help="a mutation's name (repeatable)")
    parser.add_argument("--rotate", type=int, default=0, help="run this many, chosen by the current commit")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))
    parser.add_argument("--seed", default="1", help="PERFKERN_EMULATE_SEED of every test run")
    args = parser.parse_args(argv)

    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:28} {m.path:36} {m.what}")
        return 0
    names = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.only if n not in names]
    if unknown:
        sys.exit(f"mutate_csrc: unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [names[n] for n in args.only] if args.only else rotation(args.rotate) if args.rotate else MUTATIONS

    build_dir = args.build_dir.resolve()
    configure(build_dir)
    start = time.time()
    module, log = build(build_dir, args.jobs)
    if module is None:
        sys.exit(f"mutate_csrc: the unmutated core does not build\n{log}")
    print(f"built {module.name} in {time.time() - start:.0f} s", flush=True)
    for tests in dict.fromkeys(m.tests for m in chosen):
        status, failed, summary = run_tests(module, tests, args.seed)
        if status != 0:
            sys.exit(f"mutate_csrc: the unmutated core fails {' '.join(tests)}: {summary}\n{failed[:10]}")
        print(f"unmutated: {' '.join(tests)}: {summary}", flush=True)

    rows = []
    for m in chosen:
        original = apply(m)
        try:
            t0 = time.time()
            module, log = build(build_dir, args.jobs)
            if module is None:
                sys.exit(f"mutate_csrc: {m.name} does not compile; fix the mutation\n{log[-3000:]}")
            built = time.time() - t0
            status, failed, summary = run_tests(module, m.tests, args.seed)
        finally:
            (ROOT / m.path).write_text(original)
        caught = status != 0
        rows.append((m, caught, failed, summary))
        print(f"{m.name}: {'caught' if caught else 'NOT CAUGHT'} ({summary}; rebuilt in {built:.0f} s)", flush=True)

    print("\n| mutation | what | caught | failing tests |")
    print("|---|---|---|---|")
    for m, caught, failed, summary in rows:
        died = f"; {summary}" if "died" in summary else ""
        print(f"| {m.name} | {m.what} | {'yes' if caught else '**no**'} | {failing_summary(failed) or summary}{died} |")
    missed = [m.name for m, caught, _, _ in rows if not caught]
    if missed:
        print(f"\nnot caught: {', '.join(missed)}")
        return 1
    print(f"\nall {len(rows)} mutations caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
