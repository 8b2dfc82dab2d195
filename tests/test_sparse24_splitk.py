"""Split-K in the Triton sparse24 mm (DESIGN §3.3): forced slice counts against the reference at awkward sizes,
strided outputs, run-to-run bit equality, and the rule that picks the split from the grid and the SM count."""

import pytest
import torch
import triton
from tolerances import assert_bits_equal, assert_within_torch_error

import perfkern
from perfkern.ops._common import empty
from perfkern.reference import sparse24 as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (M, N, K, r); r = 0 means no low-rank term. N is never a multiple of the decode BLOCK_N (32) except where
# N = 128, and K is a multiple of 16 but not of every slice width (K = 112 in 4 slices: 32, 32, 32, 16).
SHAPES = [
    pytest.param(1, 40, 112, 1, id="M1-N40-K112-r1"),
    pytest.param(3, 70, 80, 5, id="M3-N70-K80-r5"),
    pytest.param(16, 33, 48, 16, id="M16-N33-K48-r16"),
    pytest.param(3, 128, 128, 0, id="M3-N128-K128-nolora"),
    pytest.param(1, 16, 16, 0, id="M1-N16-K16-nolora"),
]
SPLITS = [pytest.param(s, id=f"S{s}") for s in (1, 2, 4)]


@pytest.fixture
def kernels(device):
    reason = perfkern._dispatch.unavailable_reason("triton", device)
    if reason is not None:
        pytest.skip(f"triton backend unavailable: {reason}")
    from perfkern.kernels import sparse24

    return sparse24


def _problem(m, n, k, r, dtype, device, bias=True):
    """Inputs of one mm call, O(1) outputs in every dtype; B is a transposed view (strides (1, N))."""
    values, meta = ref.compress_2to4((torch.randn(n, k, device=device) / k**0.5).to(dtype))
    return {
        "x": torch.randn(m, k, device=device).to(dtype),
        "values": values,
        "meta": meta,
        "bias": torch.randn(n, device=device).to(dtype) if bias else None,
        "lora_t": torch.randn(m, r, device=device).to(dtype) if r else None,
        "lora_b": torch.randn(r, n, device=device).to(dtype).t() if r else None,
        "scale": 0.5,
    }


def _truth_and_native(p):
    """The reference product in float64 (decompress, then matmul) and the same math in PyTorch at the inputs'
    precision, the error yardstick."""
    w = ref.decompress_2to4(p["values"], p["meta"])
    truth = p["x"].double() @ w.double().t()
    native = p["x"] @ w.t()
    if p["bias"] is not None:
        truth, native = truth + p["bias"].double(), native + p["bias"]
    if p["lora_t"] is not None:
        truth = truth + p["scale"] * p["lora_t"].double() @ p["lora_b"].double().t()
        native = native + p["scale"] * p["lora_t"] @ p["lora_b"].t()
    return truth, native


def _mm(kernels, p, out, split_k):
    kernels.mm(p["x"], p["values"], p["meta"], p["bias"], p["lora_t"], p["lora_b"], p["scale"], out, split_k=split_k)
    return out


@pytest.mark.parametrize("split_k", SPLITS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,r", SHAPES)
def test_split_matches_reference(kernels, device, m, n, k, r, dtype, bias, split_k):
    cfg = kernels._mm_config(m, n, k, r, kernels._sm_count(device), split_k)
    assert (cfg.splits > 1) == (split_k > 1 and k > 16), "a forced split must take the split path when K allows"
    p = _problem(m, n, k, r, dtype, device, bias)
    y = _mm(kernels, p, empty((m, n), dtype, device), split_k)
    truth, native = _truth_and_native(p)
    assert_within_torch_error(y, truth, native, f"y, {cfg.splits} slices of {cfg.k_per_split}")


@pytest.mark.parametrize("split_k", SPLITS)
@pytest.mark.parametrize("layout", ["transposed", "padded"])
def test_split_writes_strided_out(kernels, device, layout, split_k):
    """out and x as views: out transposed (strides (1, M)) or a column slice of a wider buffer; x likewise."""
    m, n, k, r, dtype = 3, 70, 112, 5, torch.float16
    p = _problem(m, n, k, r, dtype, device)
    if layout == "transposed":
        out = empty((n, m), dtype, device).t()
        p["x"] = p["x"].t().contiguous().t()
    else:
        out = empty((m, n + 9), dtype, device)[:, 5 : 5 + n]
        wide = torch.randn(m, k + 32, device=device).to(dtype)
        wide[:, 16 : 16 + k] = p["x"]
        p["x"] = wide[:, 16 : 16 + k]
    y = _mm(kernels, p, out, split_k)
    truth, native = _truth_and_native(p)
    assert_within_torch_error(y, truth, native, "y")
    if layout == "padded":
        assert torch.isnan(out._base[:, :5]).all() and torch.isnan(out._base[:, 5 + n :]).all(), "wrote outside out"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("split_k", [pytest.param(s, id=f"S{s}") for s in (2, 4)])
def test_split_is_deterministic(kernels, device, dtype, split_k):
    p = _problem(16, 70, 112, 5, dtype, device)
    first = _mm(kernels, p, empty((16, 70), dtype, device), split_k)
    second = _mm(kernels, p, empty((16, 70), dtype, device), split_k)
    assert_bits_equal(second, first)


def test_automatic_rule_splits_decode_and_not_large_m(kernels):
    """With an H100's 132 SMs an N = 4096 decode grid has 128 programs: K is split into a power of two of whole
    BLOCK_K chunks until the grid reaches 2 programs per SM; a prefill-sized M fills the GPU without it."""
    sms = 132
    for m, n, k in [(1, 4096, 4096), (16, 4096, 4096), (1, 4096, 11008), (1, 2048, 2048)]:
        cfg = kernels._mm_config(m, n, k, 16, sms)
        programs = triton.cdiv(n, cfg.block_n) * triton.cdiv(m, cfg.block_m)
        assert programs < 2 * sms
        assert cfg.splits > 1 and cfg.splits & (cfg.splits - 1) == 0, f"M{m}-N{n}-K{k}: {cfg}"
        assert cfg.k_per_split % cfg.block_k == 0 and cfg.k_per_split // cfg.block_k >= 4
        assert (cfg.splits - 1) * cfg.k_per_split < k <= cfg.splits * cfg.k_per_split
    assert kernels._mm_config(1, 4096, 4096, 0, sms).splits == 4  # 512 programs: 3.9 per SM
    for m, n, k in [(4096, 4096, 4096), (1, 16384, 4096), (1, 4096, 512)]:
        assert kernels._mm_config(m, n, k, 16, sms).splits == 1, f"M{m}-N{n}-K{k}"
    assert kernels._mm_config(1, 4096, 4096, 0, 16).splits == 1, "128 programs are plenty for 16 SMs"


def test_forced_split_cuts_whole_meta_words(kernels):
    # The tile stays the decode one of MM_TILES: the kernel's masks end each 32-column slice inside a 256 chunk.
    cfg = kernels._mm_config(3, 40, 112, 5, 132, split_k=4)
    assert (cfg.splits, cfg.k_per_split, cfg.block_k) == (4, 32, kernels.MM_TILES["decode"][2])
    assert kernels._mm_config(3, 40, 32, 5, 132, split_k=4).splits == 2, "K = 32 holds only two meta words"
    assert kernels._mm_config(3, 40, 112, 5, 132, split_k=1).splits == 1


def test_interpreter_assumes_an_h100(kernels):
    assert kernels._sm_count(torch.device("cpu")) == 132


def test_bad_split_is_an_error(kernels, device):
    p = _problem(1, 16, 32, 0, torch.float32, device)
    with pytest.raises(ValueError, match="split_k must be a positive number of K slices or None, got 0"):
        _mm(kernels, p, empty((1, 16), torch.float32, device), 0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_automatic_split_at_decode_size_on_gpu(kernels, device, dtype):
    """A real decode shape through the automatic rule and the op, against the reference."""
    m, n, k, r = 1, 4096, 4096, 16
    cfg = kernels._mm_config(m, n, k, r, kernels._sm_count(device))
    if cfg.splits == 1:
        pytest.skip(f"{kernels._sm_count(device)} SMs fill without a split")
    p = _problem(m, n, k, r, dtype, device)
    with perfkern.use_backend("triton"):
        y = torch.ops.perfkern.sparse24_mm(*p.values())
        again = torch.ops.perfkern.sparse24_mm(*p.values())
    truth, native = _truth_and_native(p)
    assert_within_torch_error(y, truth, native, "y")
    assert_bits_equal(again, y)
