"""Each of the CUDA core's sparse GEMM kernels, pinned (mma.sp on sm_80+, wgmma.sp on sm_90a), against the
reference: odd shapes past every tile edge, K tails, strided and misaligned operands, the low-rank term at ranks
that cross the 16-wide chunks, NaN-poisoned outputs. The ``cuda`` backend's own dispatch is covered by
test_sparse24_linear.py; here each kernel is checked whichever one that dispatch would pick.

They run on a GPU, or on the CPU in the emulator (``PERFKERN_EMULATE=1``), whose device is sm_90 unless
``PERFKERN_EMULATE_SM=80``; the largest shapes are left to GPUs."""

import os
import subprocess
import sys

import pytest
import torch
from tolerances import assert_within_torch_error

import perfkern
from perfkern import _dispatch, _ext, sparsity
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

pytestmark = pytest.mark.cuda_emulated

MMA_SP, WGMMA_SP = ops.CUDA_MM_KERNELS["mma.sp"], ops.CUDA_MM_KERNELS["wgmma.sp"]
# Multiply-adds above which a shape runs on GPUs only (the emulator executes ~10^8 per second).
EMULATED_MAX_MACS = 20_000_000
SHAPES = [
    pytest.param(33, 64, 32, 0, id="M33-N64-K32"),
    pytest.param(64, 96, 160, 1, id="M64-N96-K160-r1"),
    pytest.param(65, 200, 96, 16, id="M65-N200-K96-r16"),
    pytest.param(40, 72, 96, 64, id="M40-N72-K96-r64"),
    pytest.param(130, 257, 320, 20, id="M130-N257-K320-r20"),
    # K loops long enough that both pipelines wrap around their stages several times (wgmma: 4 x 128 of K).
    pytest.param(40, 64, 1056, 5, id="M40-N64-K1056-r5"),
    pytest.param(257, 128, 4096, 70, id="M257-N128-K4096-r70"),
    pytest.param(1000, 4096, 512, 8, id="M1000-N4096-K512-r8"),
    pytest.param(8, 40, 64, 3, id="M8-N40-K64-r3"),
]


def _device() -> torch.device:
    """Where the cuda backend runs: the GPU, or the CPU under PERFKERN_EMULATE."""
    return torch.device("cpu") if _ext.emulated() else torch.device("cuda")


@pytest.fixture
def dev():
    device = _device()
    reason = _dispatch.unavailable_reason("cuda", device)
    if reason is not None:
        pytest.skip(f"cuda backend unavailable: {reason}")
    return device


def _sm90() -> bool:
    info = _ext.extension().device_info(0)
    return (info["major"], info["minor"]) == (9, 0)


@pytest.mark.parametrize("kernel", [MMA_SP, WGMMA_SP], ids=["mma_sp", "wgmma_sp"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,n,k,r", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "misaligned"])
def test_kernel_matches_reference(dev, kernel, dtype, m, n, k, r, layout):
    if kernel == WGMMA_SP and not _sm90():
        pytest.skip("wgmma.sp runs on sm_90 devices")
    if dev.type == "cpu" and m * n * k > EMULATED_MAX_MACS:
        pytest.skip("too large for the emulator (runs on GPUs)")
    pad = {"contiguous": 0, "strided": 64, "misaligned": 3}[layout]
    x = torch.randn(m, k + pad, device=dev).to(dtype)[:, pad:] if pad else torch.randn(m, k, device=dev).to(dtype)
    values, meta = ref.compress_2to4((torch.randn(n, k, device=dev) / k**0.5).to(dtype))
    if layout == "misaligned":
        values = torch.cat([torch.zeros(n, 1, device=dev, dtype=dtype), values], 1)[:, 1:]
    bias = torch.randn(n, device=dev).to(dtype)
    lora_t = torch.randn(m, r, device=dev).to(dtype) if r else None
    lora_b = torch.randn(r, n, device=dev).to(dtype).t() if r else None
    out_full = torch.full((m, n + pad), float("nan"), device=dev, dtype=dtype)
    out = out_full[:, :n]
    ops._cuda_mm(x, values, meta, bias, lora_t, lora_b, 0.5, out, kernel=kernel)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    assert not out.isnan().any(), "outputs left unwritten"
    if pad:
        assert out_full[:, n:].isnan().all(), "wrote past the output's columns"
    w = ref.decompress_2to4(values.contiguous(), meta)
    truth = x.double() @ w.double().t() + bias.double()
    native = x @ w.t() + bias
    if r:
        truth = truth + 0.5 * lora_t.double() @ lora_b.double().t()
        native = native + 0.5 * lora_t @ lora_b.t()
    assert_within_torch_error(out, truth, native, f"kernel {kernel}")


@pytest.mark.parametrize("kernel", [MMA_SP, WGMMA_SP], ids=["mma_sp", "wgmma_sp"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_kernel_without_bias_nor_low_rank(dev, kernel, dtype):
    if kernel == WGMMA_SP and not _sm90():
        pytest.skip("wgmma.sp runs on sm_90 devices")
    m, n, k = 70, 136, 224
    x = torch.randn(m, k, device=dev).to(dtype)
    values, meta = ref.compress_2to4((torch.randn(n, k, device=dev) / k**0.5).to(dtype))
    out = torch.full((m, n), float("nan"), device=dev, dtype=dtype)
    ops._cuda_mm(x, values, meta, None, None, None, 1.0, out, kernel=kernel)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    w = ref.decompress_2to4(values, meta)
    assert_within_torch_error(out, x.double() @ w.double().t(), x @ w.t(), f"kernel {kernel}")


def test_wgmma_elsewhere_says_why(dev):
    if _sm90():
        pytest.skip("this device runs wgmma.sp")
    x = torch.randn(64, 64, device=dev, dtype=torch.float16)
    values, meta = ref.compress_2to4(torch.randn(64, 64, device=dev, dtype=torch.float16))
    out = torch.empty(64, 64, device=dev, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="wgmma.sp kernel needs an sm_90 device"):
        ops._cuda_mm(x, values, meta, None, None, None, 1.0, out, kernel=WGMMA_SP)


def test_emulated_sm80_runs_mma_sp_and_refuses_wgmma(dev):
    """On an emulated sm_80 device the launcher refuses the wgmma.sp kernel, as on an A100, and AUTO takes mma.sp
    at every M (the device is chosen once per process, hence the subprocess)."""
    if dev.type != "cpu":
        pytest.skip("the emulated device's architecture is chosen by PERFKERN_EMULATE_SM")
    script = """
import torch
from perfkern import _ext
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref
assert _ext.extension().device_info(0)["major"] == 8
x = torch.randn(96, 64).half()
values, meta = ref.compress_2to4(torch.randn(48, 64).half())
out = torch.full((96, 48), float("nan")).half()
ops._cuda_mm(x, values, meta, None, None, None, 1.0, out, kernel=0)
w = ref.decompress_2to4(values, meta)
assert (out.float() - (x.float() @ w.float().t())).abs().max() < 0.1
try:
    ops._cuda_mm(x, values, meta, None, None, None, 1.0, out, kernel=2)
except RuntimeError as err:
    assert "wgmma.sp kernel needs an sm_90 device" in str(err), err
    print("refused")
"""
    env = {**os.environ, "PERFKERN_EMULATE_SM": "80"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"


def _documented_mma_layout(meta: torch.Tensor) -> torch.Tensor:
    """The metadata layout of perfkern_sparse24_meta_to_mma as perfkern.h documents it: in blocks of 32 rows x 32 K
    columns, word ((b * meta_cols/2 + s) * 32 + lane), lane = 4g + t, holds canonical meta[r, c] (low 16 bits) and
    meta[r + 8, c] (high 16 bits), r = 32b + 16 (t / 2) + g, c = 2s + t % 2; rows past the matrix read 0x4444."""
    rows, cols = meta.shape
    blocks = -(-rows // 32)
    padded = torch.full((blocks * 32, cols), 0x4444, dtype=torch.int64)
    padded[:rows] = meta.long() & 0xFFFF
    words = torch.empty(blocks, cols // 2, 32, dtype=torch.int64)
    b = torch.arange(blocks)[:, None]
    s = torch.arange(cols // 2)[None, :]
    for lane in range(32):
        g, t = divmod(lane, 4)
        r = 32 * b + 16 * (t // 2) + g
        c = 2 * s + t % 2
        words[:, :, lane] = padded[r, c] | (padded[r + 8, c] << 16)
    return words.flatten()


@pytest.mark.parametrize("rows,meta_cols", [(40, 6), (64, 2), (7, 4)], ids=["N40-K96", "N64-K32", "N7-K64"])
def test_meta_to_mma_matches_the_documented_layout(dev, rows, meta_cols):
    meta = torch.randint(-(2**15), 2**15, (rows, meta_cols), dtype=torch.int16, device=dev)
    words = ops._mma_meta(meta)
    assert words.numel() == _ext.extension().sparse24_mma_meta_size(rows, meta_cols)
    got = words.cpu().view(torch.int32).long() & 0xFFFFFFFF
    assert torch.equal(got, _documented_mma_layout(meta.cpu()))


def test_format_kernels_loop_over_the_grid(dev):
    """More 16-column chunks (2100 x 16) than a launch of the emulated device has threads (4 SMs x 8 blocks x 4
    waves x 256): the format kernels' grid-stride loops take a second turn."""
    w = torch.randn(2100, 256, device=dev).to(torch.bfloat16)
    with perfkern.use_backend("cuda"):
        values, meta = sparsity.compress_2to4(w, strict=False)
        dense = sparsity.decompress_2to4(values, meta)
        gathered = sparsity.gather_2to4(w, meta)
    expected_values, expected_meta = ref.compress_2to4(w.cpu())
    assert torch.equal(meta.cpu(), expected_meta)
    assert torch.equal(values.cpu().view(torch.int16), expected_values.view(torch.int16))
    assert torch.equal(
        dense.cpu().view(torch.int16), ref.decompress_2to4(expected_values, expected_meta).view(torch.int16)
    )
    assert torch.equal(gathered.cpu().view(torch.int16), ref.gather_2to4(w.cpu(), expected_meta).view(torch.int16))
