"""The emulator that executes the CUDA core on the CPU (csrc/emu, DESIGN §2), tested on its own:

- tests/csrc/emulator_check.cpp, compiled here against the emulator: barriers, warp collectives, atomics,
  fp16/bf16, cp.async, ldmatrix, mma, mma.sp and wgmma against values computed on the host, and every fault the
  emulator must report (deadlocks, mismatched collectives, races, invalid metadata, in-flight operands);
- through Python (``PERFKERN_EMULATE``): the cuda backend runs on CPU tensors, ``auto`` never chooses it, a kernel
  fault reaches the caller with the emulator's diagnosis, ``python -m perfkern info`` names the core.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import perfkern
from perfkern import _dispatch, _ext, sparsity
from perfkern.reference import sparse24 as ref

ROOT = Path(__file__).resolve().parent.parent
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    """The emulator_check program: one case per run."""
    if CXX is None:
        pytest.skip("no C++ compiler")
    work = tmp_path_factory.mktemp("emulator")
    exe = work / "emulator_check"
    sources = [ROOT / "tests/csrc/emulator_check.cpp", *sorted((ROOT / "csrc/emu").glob("*.cpp"))]
    flags = ["-std=c++17", "-O0", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-DPERFKERN_EMULATE=1",
             f"-I{ROOT / 'csrc/emu/include'}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc/include'}"]  # fmt: skip
    objects = [work / f"{src.stem}.o" for src in sources]
    compiles = [
        subprocess.Popen([CXX, *flags, "-c", str(src), "-o", str(obj)], stderr=subprocess.PIPE, text=True)
        for src, obj in zip(sources, objects, strict=True)
    ]
    for proc in compiles:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    subprocess.run([CXX, *map(str, objects), "-o", str(exe), "-pthread"], check=True, timeout=600)

    def run(case: str, **env) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), case], capture_output=True, text=True, timeout=300, env={**os.environ, **env})

    return run


@pytest.mark.parametrize(
    "case",
    ["barrier", "missing_barrier", "syncthreads_reduce", "named_barriers", "warp", "atomics", "fp16", "cp_async",
     "ldmatrix", "mma", "wgmma", "proxy_fence"],
)  # fmt: skip
def test_emulated_kernels_compute_what_the_host_does(check, case):
    result = check(case)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("ok"), result.stdout + result.stderr


# Each fault, the launch error it must give (code and message): the kernel is named, and what went wrong.
FAULTS = {
    "partial_shfl": (
        719,
        r"kernel 'partial_shfl' block \(0, 0, 0\): deadlock: __shfl_sync in warp 0: lanes 0-15 arrived, lanes 16-31 "
        r"never did \(16-31 exited\)",
    ),
    "split_barrier": (
        719,
        r"deadlock: __syncwarp in warp 1: lanes 8-31 arrived, lanes 0-7 never did \(0-7 wait at __syncthreads\) \| "
        r"__syncthreads: 40 of 64 threads arrived; threads 40-63 wait at __syncwarp",
    ),
    "mismatch": (
        719,
        r"deadlock: .*__ballot_sync in warp 0: lanes 0,2,4,[0-9,]*,30 arrived, lanes 1,3,[0-9,]*,31 never did "
        r"\(1,3,[0-9,]*,31 wait at __shfl_sync\)",
    ),
    "ldg_misaligned": (716, r"__ldg of 16 bytes from 0x[0-9a-f]+: not 16-byte aligned"),
    "cp_async_race": (
        719,
        r"cp.async: shared memory at offset 0x[0-9a-f]+, the destination of a copy still in flight, was written",
    ),
    "smem_overflow": (700, r"a store past the end of the dynamic shared memory of 256 bytes \(at byte 256\)"),
    "mma_sp_bad_metadata": (
        715,
        r"mma.sp.m16n8k32.f16: invalid metadata 0x5 in bits 23-20 of lane 5 \(row 9, columns 20-23\): indices 1, 1",
    ),
    "wgmma_operand_changed": (
        719,
        r"kernel 'wgmma_fault' .*: wgmma.mma_async: operand A at shared offset 0x[0-9a-f]+ \(dynamic shared memory "
        r"byte \d+\) changed while the wgmma was in flight",
    ),
    "wgmma_accumulator_written": (
        719,
        r"accumulator register 3 of warpgroup thread 70 was written while the wgmma was in flight",
    ),
    "wgmma_without_fence": (719, r"wgmma.mma_async.f16 without a wgmma.fence since the warpgroup's last"),
    "missing_proxy_fence": (
        719,
        r"wgmma.mma_async.f16 reads A row \d+ at shared offset 0x[0-9a-f]+, which thread \d+ filled with cp.async "
        r"and has not made visible to the async proxy",
    ),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_faults_are_reported_with_their_cause(check, case):
    code, message = FAULTS[case]
    result = check(case)
    assert result.returncode == 1, result.stdout + result.stderr
    match = re.search(r"FAULT (\d+): (.*)", result.stdout)
    assert match is not None, result.stdout
    assert int(match.group(1)) == code, match.group(0)
    assert re.search(message, match.group(2)), match.group(2)
    assert re.search(r"\[emulated sm_90, PERFKERN_EMULATE_SEED=\d+, launch \d+\]", match.group(2))


def test_wgmma_needs_an_sm90_device(check):
    result = check("wgmma", PERFKERN_EMULATE_SM="80")
    assert "FAULT 715: " in result.stdout, result.stdout
    assert "wgmma.fence needs sm_90a; the emulated device is sm_80 (PERFKERN_EMULATE_SM)" in result.stdout


def test_bad_emulated_sm_is_no_device(check):
    result = check("barrier", PERFKERN_EMULATE_SM="75")
    assert "FAULT 100: " in result.stdout and "PERFKERN_EMULATE_SM must be 80 or 90, got '75'" in result.stdout


def test_schedules_are_random_and_reproducible_by_seed(check):
    """Threads arrive in a random order, the same for the same seed."""

    def order(seed: str) -> list[int]:
        result = check("schedule", PERFKERN_EMULATE_SEED=seed)
        assert result.returncode == 0, result.stdout
        return [int(v) for v in result.stdout.split()[:-1]]

    first = order("7")
    assert sorted(first[:64]) == list(range(64)) and sorted(first[64:]) == list(range(64))
    assert first[:64] != list(range(64)), "not the program order"
    assert order("7") == first
    assert order("8") != first


# ---- through Python ------------------------------------------------------------------------------------------


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setenv("PERFKERN_EMULATE", "1")
    reason = _ext.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the emulated core is not available: {reason}")
    return _ext.extension()


def test_the_emulated_core_reports_itself(emulated):
    assert emulated.build_flavor() == "emulated"
    assert emulated.version() == perfkern.__version__
    assert emulated.device_count() == 1
    info = emulated.device_info(0)
    assert (info["major"], info["minor"]) in ((9, 0), (8, 0))
    assert info["multiprocessor_count"] == 4
    assert "emulated" in info["name"]
    assert "cuda" in perfkern.available_backends("cpu")


@pytest.mark.cuda_emulated
def test_auto_never_chooses_the_emulated_core(emulated, monkeypatch):
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    w = torch.randn(32, 64, dtype=torch.float16)
    sparsity.compress_2to4(w, strict=False)
    assert perfkern.last_backend("compress_2to4") != "cuda"
    values, meta = ref.compress_2to4(w)
    torch.ops.perfkern.sparse24_mm(torch.randn(40, 64, dtype=torch.float16), values, meta, None, None, None, 1.0)
    assert perfkern.last_backend("sparse24_mm") != "cuda"
    with perfkern.use_backend("cuda"):
        sparsity.compress_2to4(w, strict=False)
    assert perfkern.last_backend("compress_2to4") == "cuda"


@pytest.mark.cuda_emulated
def test_a_kernel_fault_reaches_the_caller(emulated):
    """Metadata whose indices are not ordered is undefined on the hardware: the emulated mma.sp kernel stops with
    the instruction, the lane and the row."""
    x = torch.randn(8, 32, dtype=torch.float16)
    values = torch.randn(16, 16, dtype=torch.float16)
    meta_mma = torch.zeros(emulated.sparse24_mma_meta_size(16, 2), dtype=torch.int16)  # nibbles 0b0000
    out = torch.empty(8, 16, dtype=torch.float16)
    with pytest.raises(
        RuntimeError,
        match=r"perfkern_sparse24_mm: CUDA error: launch of sparse24 mm kernel: .*"
        r"kernel 'sparse24 mm kernel' .* mma.sp.m16n8k32.f16: invalid metadata 0x0 .*indices 0, 0",
    ):
        emulated.sparse24_mm(
            stream=0, x=x.data_ptr(), values=values.data_ptr(), meta_mma=meta_mma.data_ptr(), bias=0, lora_t=0,
            lora_b=0, out=out.data_ptr(), m=8, n=16, k=32, r=0, scale=1.0, x_row_stride=32, values_row_stride=16,
            bias_stride=0, t_stride0=0, t_stride1=0, b_stride0=0, b_stride1=0, out_row_stride=16, dtype=1, device=0,
            kernel=1,
        )  # fmt: skip


def test_emulation_on_gpu_tensors_is_refused(monkeypatch):
    monkeypatch.setenv("PERFKERN_EMULATE", "1")
    reason = _dispatch.unavailable_reason("cuda", torch.device("cuda"))
    assert reason is not None and "runs the emulated core on CPU tensors" in reason


def test_a_bad_emulated_path_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PERFKERN_EMULATE", str(tmp_path / "missing.so"))
    assert "expected 1 or the path of a _C_emu build" in _ext.unavailable_reason()


def test_info_names_the_emulated_core(emulated):
    env = {**os.environ, "PERFKERN_EMULATE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "perfkern", "info"], env=env, check=True, capture_output=True, text=True, timeout=600
    ).stdout
    assert "core: perfkern._C_emu" in out and "emulated build" in out
    assert "the cuda backend runs on CPU tensors" in out
