"""The 2:4 format on every backend against the reference, bit for bit (DESIGN §3.1, §3.2)."""

import functools
import itertools
import math
import re

import pytest
import torch
from tolerances import assert_bits_equal as _assert_bits_equal
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

import perfkern
from perfkern import sparsity
from perfkern.reference import sparse24 as ref


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The format ops only move data: NaNs must keep their sign and payload too."""
    _assert_bits_equal(actual, expected, exact_nan=True)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [
    pytest.param(1, 16, id="N1-K16"),
    pytest.param(7, 48, id="N7-K48"),
    pytest.param(33, 112, id="N33-K112"),
    pytest.param(64, 128, id="N64-K128"),
]
CUTLASS_SHAPES = [
    pytest.param(32, 64, id="N32-K64"),
    pytest.param(96, 128, id="N96-K128"),
]


def _awkward(n: int, k: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Random values with the groups that break careless kernels planted in the first rows: all zeros, signed
    zeros, ties, a single non-zero, NaN, inf."""
    w = torch.randn(n, k, device=device).to(dtype)
    special = [
        [0.0, 0.0, 0.0, 0.0],
        [-0.0, -0.0, 0.0, -0.0],
        [1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, -3.0],
        [2.0, -2.0, 2.0, 0.5],
        [float("nan"), 1.0, 0.0, 2.0],
        [0.5, float("inf"), -float("inf"), 1.0],
        [-0.0, 5.0, -0.0, 0.0],
    ]
    flat = w.view(-1, 4)
    for i, group in enumerate(special[: flat.shape[0]]):
        flat[i] = torch.tensor(group, dtype=dtype)
    return w


def _brute_force_mask(scores: torch.Tensor) -> torch.Tensor:
    """The selection rule written out one group at a time, independent of the vectorised reference."""
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for r, g in itertools.product(range(scores.shape[0]), range(scores.shape[1] // 4)):
        group = [float(v) for v in scores[r, 4 * g : 4 * g + 4].float()]
        mags = [float("inf") if v != v else abs(v) for v in group]
        order = sorted(range(4), key=lambda j: (-mags[j], j))
        for j in order[:2]:
            out[r, 4 * g + j] = True
    return out


# Every group of four over these values: each tie (equal magnitudes of either sign, +0 and -0, two NaNs, +inf and
# -inf) at every pair of positions and in both orders, and NaNs with a sign and a payload that data movement must
# keep bit for bit. Bit patterns per dtype: +0, -0, 1, -1, 2, +inf, -inf, a quiet NaN with a payload, a negative
# signalling NaN with a payload.
_TIE_BITS = {
    torch.float32: [0, -(2**31), 0x3F800000, -0x40800000, 0x40000000, 0x7F800000, -0x00800000, 0x7FC00001,
                    -0x007FFFFF],
    torch.float16: [0, -0x8000, 0x3C00, -0x4400, 0x4000, 0x7C00, -0x0400, 0x7E01, -0x03FF],
    torch.bfloat16: [0, -0x8000, 0x3F80, -0x4080, 0x4000, 0x7F80, -0x0080, 0x7FC1, -0x007F],
    torch.float64: [0, -(2**63), 0x3FF << 52, -(0x401 << 52), 0x400 << 52, 0x7FF << 52, -(1 << 52),
                    (0x7FF8 << 48) + 1, -(1 << 52) + 1],
}  # fmt: skip


@functools.cache
def _every_group(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(w, mask, values, meta, dense): w [411, 64] holds all 9^4 groups over _TIE_BITS (then all-zero groups), and
    the expected mask, canonical format and decompressed matrix, worked out one group at a time on the bits."""
    int_dtype = {8: torch.int64, 4: torch.int32, 2: torch.int16}[dtype.itemsize]
    patterns = _TIE_BITS[dtype]
    as_float = torch.tensor(patterns, dtype=int_dtype).view(dtype).double().tolist()
    groups = list(itertools.product(range(len(patterns)), repeat=4))
    groups += [(0, 0, 0, 0)] * (-len(groups) % 16)
    w_bits, mask, v_bits, nibbles, d_bits = [], [], [], [], []
    for group in groups:
        mags = [math.inf if math.isnan(as_float[i]) else abs(as_float[i]) for i in group]
        kept = sorted(sorted(range(4), key=lambda j: (-mags[j], j))[:2])
        kept_bits = [0 if as_float[group[j]] == 0 else patterns[group[j]] for j in kept]
        w_bits += [patterns[i] for i in group]
        mask += [p in kept for p in range(4)]
        v_bits += kept_bits
        nibbles.append(kept[0] | kept[1] << 2)
        d_bits += [kept_bits[kept.index(p)] if p in kept else 0 for p in range(4)]
    rows = len(groups) // 16
    words = [sum(n << (4 * q) for q, n in enumerate(nibbles[i : i + 4])) for i in range(0, len(nibbles), 4)]
    meta = torch.tensor(words, dtype=torch.int32).to(torch.int16).view(rows, 4)

    def floats(b, cols):
        return torch.tensor(b, dtype=int_dtype).view(dtype).view(rows, cols)

    mask = torch.tensor(mask).view(rows, 64)
    return floats(w_bits, 64), mask, floats(v_bits, 32), meta, floats(d_bits, 64)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64], ids=str)
def test_every_tie_sign_and_nan_pattern(backend, device, dtype):
    """The selection rule (ties to the lower index, NaN above every number, -0.0 stored as +0.0) on every group
    of four over signed zeros, equal magnitudes, infinities and NaNs, and every NaN's bits kept by compress,
    decompress and gather. float64 runs on the reference; the kernels refuse it by name."""
    w, mask, values, meta, dense = (t.to(device) for t in _every_group(dtype))
    if dtype == torch.float64 and backend != "reference":
        with pytest.raises(perfkern.BackendUnavailableError) as refused:
            sparsity.compress_2to4(w, strict=False)
        if f"has no {backend} implementation" in str(refused.value):
            raise refused.value  # the backend lacks the op (skipped by conftest), so it cannot refuse a dtype
        assert re.search(f"'{backend}' takes float32.*got torch.float64", str(refused.value)), refused.value
        return
    got_values, got_meta = sparsity.compress_2to4(w, strict=False)
    assert perfkern.last_backend("compress_2to4") == backend
    assert_bits_equal(got_meta, meta)
    assert_bits_equal(got_values, values)
    assert_bits_equal(sparsity.mask_2to4(w), mask)
    assert_bits_equal(sparsity.decompress_2to4(values, meta), dense)
    assert_bits_equal(sparsity.gather_2to4(dense, meta), values)


def test_reference_mask_follows_the_rule():
    w = _awkward(9, 32, torch.float32, "cpu")
    assert torch.equal(ref.mask_2to4(w), _brute_force_mask(w))
    assert ref.mask_2to4(w).view(9, 8, 4).sum(-1).eq(2).all()


def test_reference_meta_encoding():
    # Row 0 keeps (0, 1) | (0, 2) | (1, 3) | (2, 3): nibbles 0b0100, 0b1000, 0b1101, 0b1110 (research notes).
    w = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1]], dtype=torch.float32)
    values, meta = ref.compress_2to4(w)
    assert int(meta[0, 0]) & 0xFFFF == 0b1110_1101_1000_0100
    assert torch.equal(values, torch.ones(1, 8))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
def test_compress_and_mask_match_reference(backend, device, n, k, dtype):
    w = _awkward(n, k, dtype, device)
    values, meta = sparsity.compress_2to4(w, strict=False)
    assert perfkern.last_backend("compress_2to4") == backend
    mask = sparsity.mask_2to4(w)
    assert perfkern.last_backend("mask_2to4") == backend
    expected_values, expected_meta = ref.compress_2to4(w)
    assert_bits_equal(values, expected_values)
    assert_bits_equal(meta, expected_meta)
    assert_bits_equal(mask, ref.mask_2to4(w))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
def test_decompress_inverts_compress(backend, device, n, k, dtype):
    w = torch.randn(n, k, device=device).to(dtype)
    w = torch.where(ref.mask_2to4(w), w, torch.zeros((), dtype=dtype, device=device))
    values, meta = sparsity.compress_2to4(w)
    dense = sparsity.decompress_2to4(values, meta)
    assert_bits_equal(dense, w)
    assert_bits_equal(sparsity.gather_2to4(dense, meta), values)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
def test_decompress_and_gather_any_metadata(backend, device, n, k, dtype):
    # Arbitrary int16 words include malformed nibbles (equal or descending indices): every backend must decode
    # them by the same rule as the reference.
    meta = torch.randint(-(2**15), 2**15, (n, k // 16), dtype=torch.int16, device=device)
    values = _awkward(n, k // 2, dtype, device) if k >= 32 else torch.randn(n, k // 2, device=device).to(dtype)
    assert_bits_equal(sparsity.decompress_2to4(values, meta), ref.decompress_2to4(values, meta))
    dense = _awkward(n, k, dtype, device)
    assert_bits_equal(sparsity.gather_2to4(dense, meta), ref.gather_2to4(dense, meta))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_strided_inputs(backend, device, dtype):
    big = _awkward(32, 96, dtype, device)
    w = big[::2, 16:80]  # row stride 192 elements, unit column stride: no copy is needed
    values, meta = sparsity.compress_2to4(w, strict=False)
    expected_values, expected_meta = ref.compress_2to4(w.contiguous())
    assert_bits_equal(values, expected_values)
    assert_bits_equal(meta, expected_meta)
    wide_values = torch.cat([values, values], dim=1)[:, : values.shape[1]]
    assert_bits_equal(sparsity.decompress_2to4(wide_values, meta), ref.decompress_2to4(values, meta))
    wt = big.t()[:48, :]  # column stride != 1: copied to unit column stride
    assert_bits_equal(sparsity.mask_2to4(wt), ref.mask_2to4(wt.contiguous()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,k", CUTLASS_SHAPES)
def test_cutlass_layout_matches_torch(backend, device, n, k, dtype):
    w = torch.randn(n, k, device=device).to(dtype)
    w = torch.where(ref.mask_2to4(w), w, torch.zeros((), dtype=dtype, device=device))
    torch_values, torch_meta = sparse_semi_structured_from_dense_cutlass(w)
    values_c, meta_c = sparsity.to_cutlass(*sparsity.compress_2to4(w))
    assert_bits_equal(values_c, torch_values)
    assert_bits_equal(meta_c, torch_meta)
    values, meta = sparsity.from_cutlass(torch_values, torch_meta)
    assert_bits_equal(sparsity.decompress_2to4(values, meta), w)
    assert_bits_equal(sparse_semi_structured_to_dense_cutlass(values_c, meta_c), w)


# The 11 groups of at most two non-zeros, as the positions of their non-zeros.
_AT_MOST_TWO = [()] + [(p,) for p in range(4)] + list(itertools.combinations(range(4), 2))


def _same_up_to_zero_sign(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit equality with every zero read as +0.0: torch's packed values keep the dense matrix's zero (-0.0 too)
    in the slots it picks for an under-full group, the canonical format stores +0.0."""
    zero = torch.zeros((), dtype=actual.dtype, device=actual.device)
    assert_bits_equal(torch.where(actual == 0, zero, actual), torch.where(expected == 0, zero, expected))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cutlass_layout_of_under_full_groups(backend, device, dtype):
    """Every 2:4 matrix, groups with fewer than two non-zeros included: to_cutlass(*compress_2to4(w)) is torch's
    converter bit for bit (zeros by value), and from_cutlass gives back the canonical pair."""
    n, k = 64, 64
    positions = [_AT_MOST_TWO[(g + g // 16) % len(_AT_MOST_TWO)] for g in range(n * k // 4)]
    nonzero = torch.tensor([[p in kept for p in range(4)] for kept in positions], device=device).view(n, k)
    w = torch.randn(n, k, device=device).abs().add(0.5).to(dtype) * torch.where(torch.rand(n, k) < 0.5, -1, 1).to(
        device=device, dtype=dtype
    )
    w = torch.where(nonzero, w, torch.where(torch.rand(n, k, device=device) < 0.5, -0.0, 0.0).to(dtype))
    torch_values, torch_meta = sparse_semi_structured_from_dense_cutlass(w)
    values, meta = sparsity.compress_2to4(w)
    values_c, meta_c = sparsity.to_cutlass(values, meta)
    assert_bits_equal(meta_c, torch_meta)
    _same_up_to_zero_sign(values_c, torch_values)
    back_values, back_meta = sparsity.from_cutlass(torch_values, torch_meta)
    assert_bits_equal(back_meta, meta)
    assert_bits_equal(back_values, values)


def test_cutlass_conversion_of_any_metadata(backend, device):
    """Any metadata, malformed nibbles included, decodes to a 2:4 matrix (the second index wins): to_cutlass is
    torch's converter of that matrix, from_cutlass its canonical compression. The metadata reorder alone is a
    permutation of the words."""
    meta = torch.randint(-(2**15), 2**15, (64, 8), dtype=torch.int16, device=device)
    values = torch.randn(64, 64, device=device, dtype=torch.float16)
    values[::3, ::5] = 0.0
    dense = ref.decompress_2to4(values, meta)
    torch_values, torch_meta = sparse_semi_structured_from_dense_cutlass(dense)
    values_c, meta_c = sparsity.to_cutlass(values, meta)
    assert_bits_equal(meta_c, torch_meta)
    _same_up_to_zero_sign(values_c, torch_values)
    canonical = ref.compress_2to4(dense)
    for got, want in zip(sparsity.from_cutlass(values_c, meta_c), canonical, strict=True):
        assert_bits_equal(got, want)
    reordered = torch.ops.perfkern.meta_to_cutlass(meta)
    assert_bits_equal(reordered, ref.meta_to_cutlass(meta))
    assert_bits_equal(torch.ops.perfkern.meta_from_cutlass(reordered), meta)


def test_strict_compress_rejects_dense_input(device):
    w = torch.randn(8, 32, device=device)
    w = w * ref.mask_2to4(w)
    w[3, 4:8] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 3, columns 4..7 hold 3 non-zeros"):
        sparsity.compress_2to4(w)
    values, meta = sparsity.compress_2to4(w, strict=False)
    assert_bits_equal(sparsity.decompress_2to4(values, meta), ref.decompress_2to4(*ref.compress_2to4(w)))
    assert not sparsity.is_2to4(w)
    assert sparsity.is_2to4(sparsity.decompress_2to4(values, meta))


@pytest.mark.parametrize("n,k", [pytest.param(0, 32, id="N0-K32"), pytest.param(5, 0, id="N5-K0")])
def test_empty_matrices(backend, device, n, k):
    w = torch.randn(n, k, device=device)
    assert sparsity.is_2to4(w)
    values, meta = sparsity.compress_2to4(w)
    assert values.shape == (n, k // 2) and meta.shape == (n, k // 16) and meta.dtype == torch.int16
    assert sparsity.mask_2to4(w).shape == (n, k)
    assert sparsity.decompress_2to4(values, meta).shape == (n, k)
    assert sparsity.gather_2to4(w, meta).shape == (n, k // 2)


def test_pad_to_multiple():
    w = torch.randn(3, 20)
    padded = sparsity.pad_to_multiple(w, 16)
    assert padded.shape == (3, 32)
    assert torch.equal(padded[:, :20], w) and not padded[:, 20:].any()
    assert sparsity.pad_to_multiple(padded, 16) is padded


def _bad_calls():
    w = torch.randn(8, 32)
    values, meta = ref.compress_2to4(w)
    h_values, h_meta = ref.compress_2to4(w.half())
    cases = {
        "rank": (lambda: sparsity.compress_2to4(w[0]), ValueError, r"w must be 2-D \[N, K\], got shape \[32\]"),
        "K%16": (lambda: sparsity.compress_2to4(torch.randn(8, 20)), ValueError, r"multiple of 16 .*got 20"),
        "dtype": (
            lambda: sparsity.compress_2to4(w.int()),
            TypeError,
            r"w must be float32, float16, bfloat16 or float64, got torch.int32",
        ),
        "mask-dtype": (lambda: sparsity.mask_2to4(w.int()), TypeError, r"scores must be float32"),
        "meta-shape": (
            lambda: sparsity.decompress_2to4(values, meta[:, :1]),
            ValueError,
            r"meta must be \[N, K/16\] = \[8, 2\] for values \[8, 16\], got \[8, 1\]",
        ),
        "meta-dtype": (
            lambda: sparsity.decompress_2to4(values, meta.int()),
            TypeError,
            r"meta must be int16, got torch.int32",
        ),
        "values-K": (lambda: sparsity.decompress_2to4(values[:, :12], meta), ValueError, r"16 .*got 24"),
        "gather-meta": (
            lambda: sparsity.gather_2to4(w, meta[:4]),
            ValueError,
            r"meta must be \[N, K/16\] = \[8, 2\] for dense \[8, 32\], got \[4, 2\]",
        ),
        "cutlass-dtype": (lambda: sparsity.to_cutlass(values, meta), TypeError, r"float16/bfloat16, got torch.float32"),
        "cutlass-shape": (
            lambda: sparsity.to_cutlass(h_values, h_meta),
            ValueError,
            r"N % 32 == 0 and K % 64 == 0, got N=8, K=32",
        ),
    }
    return [pytest.param(*case, id=name) for name, case in cases.items()]


@pytest.mark.parametrize("call,error,message", _bad_calls())
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.gpu
def test_device_mismatch_is_an_error():
    values, meta = ref.compress_2to4(torch.randn(8, 32))
    with pytest.raises(ValueError, match="one device"):
        sparsity.decompress_2to4(values.cuda(), meta)


# Gradients: each op's registered backward against autograd through the reference, and the reference against
# finite differences in float64.


def test_reference_gradcheck():
    w = torch.randn(4, 32, dtype=torch.float64)
    values, meta = ref.compress_2to4(w)
    values.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: ref.decompress_2to4(v, meta), (values,))
    dense = torch.randn(4, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: ref.gather_2to4(d, meta), (dense,))
    assert torch.autograd.gradcheck(lambda d: ref.compress_2to4(d)[0], (dense,))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradients_match_reference(backend, device, dtype):
    w = torch.randn(16, 64, device=device).to(dtype)
    upstream = torch.randn(16, 32, device=device).to(dtype)
    upstream_dense = torch.randn(16, 64, device=device).to(dtype)

    w1, w2 = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    sparsity.compress_2to4(w1, strict=False)[0].backward(upstream)
    ref.compress_2to4(w2)[0].backward(upstream)
    assert_bits_equal(w1.grad, w2.grad)

    _, meta = ref.compress_2to4(w)
    v1, v2 = upstream.clone().requires_grad_(True), upstream.clone().requires_grad_(True)
    sparsity.decompress_2to4(v1, meta).backward(upstream_dense)
    ref.decompress_2to4(v2, meta).backward(upstream_dense)
    assert_bits_equal(v1.grad, v2.grad)

    d1, d2 = upstream_dense.clone().requires_grad_(True), upstream_dense.clone().requires_grad_(True)
    sparsity.gather_2to4(d1, meta).backward(upstream)
    ref.gather_2to4(d2, meta).backward(upstream)
    assert_bits_equal(d1.grad, d2.grad)


OPS = ["mask_2to4", "compress_2to4", "decompress_2to4", "gather_2to4", "meta_to_cutlass", "meta_from_cutlass"]


def _sample_args(name: str, device) -> tuple:
    w = torch.randn(32, 64, device=device, dtype=torch.float16)
    values, meta = ref.compress_2to4(w)
    return {
        "mask_2to4": (w,),
        "compress_2to4": (w.clone().requires_grad_(True),),
        "decompress_2to4": (values.clone().requires_grad_(True), meta),
        "gather_2to4": (w.clone().requires_grad_(True), meta),
        "meta_to_cutlass": (meta,),
        "meta_from_cutlass": (meta,),
    }[name]


@pytest.mark.parametrize("name", OPS)
def test_opcheck(device, name):
    torch.library.opcheck(getattr(torch.ops.perfkern, name).default, _sample_args(name, device))


def test_compiles_without_graph_breaks(device):
    def roundtrip(w):
        values, meta = torch.ops.perfkern.compress_2to4(w)
        return sparsity.decompress_2to4(values * 2, sparsity.from_cutlass(*sparsity.to_cutlass(values, meta))[1])

    w = torch.randn(32, 64, device=device, dtype=torch.float16)
    compiled = torch.compile(roundtrip, fullgraph=True, backend="aot_eager")
    assert_bits_equal(compiled(w), roundtrip(w))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_matches_torch_semi_structured_on_gpu(dtype):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = True
    w = torch.randn(128, 256, device="cuda").to(dtype)
    w = w * sparsity.mask_2to4(w)
    theirs = to_sparse_semi_structured(w)
    values_c, meta_c = sparsity.to_cutlass(*sparsity.compress_2to4(w))
    assert_bits_equal(values_c, theirs.packed.view(128, 128))
    assert_bits_equal(meta_c, theirs.meta.view(128, 16))


@pytest.mark.gpu
def test_cuda_backend_runs_on_gpu():
    reason = perfkern._dispatch.unavailable_reason("cuda", torch.device("cuda"))
    assert reason is None, reason


def test_transposable_mask_is_exact_and_2to4_both_ways():
    scores = torch.randn(16, 32)
    mask = sparsity.mask_2to4(scores, pattern="transposable")
    assert mask.view(16, 8, 4).sum(-1).eq(2).all() and mask.t().reshape(32, 4, 4).sum(-1).eq(2).all()
    # Exactness: no single valid 4x4 pattern keeps more magnitude in any tile than the chosen one.
    patterns = ref._transposable_patterns("cpu").t().view(-1, 4, 4)
    tiles = scores.abs().view(4, 4, 8, 4).permute(0, 2, 1, 3)
    chosen = mask.view(4, 4, 8, 4).permute(0, 2, 1, 3)
    best = (tiles.unsqueeze(2) * patterns).sum((-1, -2)).amax(-1)
    torch.testing.assert_close((tiles * chosen).sum((-1, -2)), best)
    assert len(patterns) == 90


def test_double_mask(backend, device):
    scores = torch.randn(32, 64, device=device)
    mask, bwd_mask = sparsity.double_mask_2to4(scores)
    assert torch.equal(mask, ref.mask_2to4(scores))
    assert not (bwd_mask & ~mask).any()
    assert bwd_mask.t().reshape(64, 8, 4).sum(-1).le(2).all()
    expected = ref.double_mask_2to4(scores)[1]
    assert torch.equal(bwd_mask, expected)
    with pytest.raises(ValueError, match="pattern must be"):
        sparsity.mask_2to4(scores, pattern="column")
    with pytest.raises(ValueError, match="multiple of 16"):
        sparsity.double_mask_2to4(scores[:20])
