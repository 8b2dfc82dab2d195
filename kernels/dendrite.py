"""Triton kernels of the dendrite-error correlation (DESIGN §3.5; Cascade-Correlation, Fahlman & Lebiere 1990).

For candidate outputs V [L, P, C, N] and neuron errors E [L, P, N], per (l, c, n), population statistics:

    v_mean = mean_p V     e_mean = mean_p E     cov = mean_p (V − v_mean)(E − e_mean)
    v_var  = mean_p (V − v_mean)²               e_var = mean_p (E − e_mean)²

    stats   one read of V and E (_dendrite_stats_fwd_kernel), plus a merge of per-split partials
            (_dendrite_merge_fwd_kernel) when P is split across programs
    grad    out = α ⊙ (E − e_mean) + β ⊙ (V − v_mean) (_dendrite_grad_bwd_kernel): read V and E, write out

Numerics. V ≈ 0.5 with a spread of 1e-4 is the normal case at initialisation, where E[VE] − E[V]E[E] in fp32
loses everything. Every program first shifts its data by the first row of the layer, V[l, 0] and E[l, 0]: for
data clustered around an offset the subtraction is exact (Sterbenz), so all later sums see values of the size of
the spread. Each chunk of BLOCK_P rows is then centred on its own mean, its sums of squares and cross products
corrected by (Σ dev)²/rows, and the chunks are merged with the pairwise formulas of Chan, Golub & LeVeque ("Algorithms
for computing the sample variance", The American Statistician 37, 1983):

    mean = mean_a + δ·r/(n + r)     M2 = M2_a + M2_b + δ²·n·r/(n + r)     co = co_a + co_b + δ_v·δ_e·n·r/(n + r)

for n rows merged so far, r rows in the chunk and δ the difference of the chunk's and the running means. All sums
are fp32. No reduction crosses a neuron n, so a NaN in E[:, :, n] stays in neuron n's statistics.

Each program owns one layer, a tile of BLOCK_N neurons (the contiguous dimension, for coalescing), BLOCK_C
candidates and one split of P, and streams [BLOCK_P, BLOCK_C, BLOCK_N] chunks of V. E is addressed per candidate
row too (the same addresses in every row), so one layout serves V and E, every reduction over P stays in a
thread's registers and no tile changes layout on chip; the repeated rows are served by L1, and HBM sees E once
per candidate tile. When layers x neuron tiles x candidate tiles alone would leave the GPU idle, P is split: every
split writes its (mean, M2, co-moment) to an fp32 workspace, all splits shifted by the same first row, and the
merge kernel combines them in split order (deterministic, no atomics).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import nonempty, rows_contiguous
from ._rounding import interpreting, round_to


@triton.jit
def _dendrite_chan(count, rows, mean_v, m2_v, co, mean_e, m2_e, b_mean_v, b_m2_v, b_co, b_mean_e, b_m2_e):
    """Merge the statistics of ``rows`` new rows (b_*) into those of ``count`` rows; all [BC, BN]."""
    frac = rows / (count + rows)
    weight = count * frac
    delta_v = b_mean_v - mean_v  # [BC, BN]
    delta_e = b_mean_e - mean_e  # [BC, BN]
    return (
        mean_v + delta_v * frac,
        m2_v + b_m2_v + delta_v * delta_v * weight,
        co + b_co + delta_v * delta_e * weight,
        mean_e + delta_e * frac,
        m2_e + b_m2_e + delta_e * delta_e * weight,
    )


@triton.jit
def _dendrite_finish(
    shift_v,
    shift_e,
    mean_v,
    m2_v,
    co,
    mean_e,
    m2_e,
    v_mean_ptr,
    e_mean_ptr,
    cov_ptr,
    v_var_ptr,
    e_var_ptr,
    layer,
    rc,
    rn,
    e_cols,
    P,
    C,
    N,
):
    """Store the final statistics of layer l, candidates rc, neurons rn from the shifted sums over all P rows.
    E's statistics are alike in every candidate row; candidate 0 writes them."""
    n_in = rn < N
    cn_in = (rc < C)[:, None] & n_in[None, :]  # [BC, BN]
    e_in = (rc == 0)[:, None] & n_in[None, :]  # [BC, BN]
    off_cn = (layer * C + rc[:, None]) * N + rn[None, :]  # [BC, BN]
    off_n = layer * N + e_cols  # [BC, BN]
    # The corrected sums are never negative in exact arithmetic; a rounding below zero is clamped, a NaN kept.
    m2_v = tl.where(m2_v < 0.0, 0.0, m2_v)
    m2_e = tl.where(m2_e < 0.0, 0.0, m2_e)
    tl.store(v_mean_ptr + off_cn, shift_v + mean_v, mask=cn_in)
    tl.store(cov_ptr + off_cn, co / P, mask=cn_in)
    tl.store(v_var_ptr + off_cn, m2_v / P, mask=cn_in)
    tl.store(e_mean_ptr + off_n, shift_e + mean_e, mask=e_in)
    tl.store(e_var_ptr + off_n, m2_e / P, mask=e_in)


@triton.jit
def _dendrite_load_chunk(v_row, e_row, p0, end, n_in, cn_in, stride_vp, stride_ep, BLOCK_P: tl.constexpr):
    """Rows p0 .. p0 + BLOCK_P of V and E below ``end``, both [BP, BC, BN] in their storage dtype."""
    rp = p0 + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
    p_in = rp < end
    v = tl.load(
        v_row[None, :, :] + rp[:, None, None] * stride_vp, mask=p_in[:, None, None] & cn_in[None, :, :], other=0.0
    )  # [BP, BC, BN]
    e = tl.load(
        e_row[None, :, :] + rp[:, None, None] * stride_ep, mask=p_in[:, None, None] & n_in[None, :, :], other=0.0
    )  # [BP, BC, BN]
    return v, e


@triton.jit
def _dendrite_tile(C, N, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """(candidates rc [BC], neurons rn [BN], rn for every candidate row [BC, BN]) of program axis 0, which
    enumerates the candidate tiles of each neuron tile, so that the programs sharing an E tile run side by side."""
    pid_cn = tl.program_id(0).to(tl.int64)
    c_tiles = tl.maximum(tl.cdiv(C, BLOCK_C), 1)
    rc = (pid_cn % c_tiles) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # [BC]
    rn = (pid_cn // c_tiles) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    # E is addressed per candidate row: V's layout then serves E too, and no tile changes layout on chip.
    e_cols = tl.zeros([BLOCK_C, 1], dtype=tl.int64) + rn[None, :]  # [BC, BN]
    return rc, rn, e_cols


@triton.jit
def _dendrite_stats_fwd_kernel(
    v_ptr,
    e_ptr,
    part_v_ptr,
    part_e_ptr,
    v_mean_ptr,
    e_mean_ptr,
    cov_ptr,
    v_var_ptr,
    e_var_ptr,
    L,
    P,
    C,
    N,
    rows_per_split,
    stride_vl,
    stride_vp,
    stride_vc,
    stride_el,
    stride_ep,
    SPLIT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Shifted, chunk-centred statistics of V [L, P, C, N] and E [L, P, N] over the rows of one split of P,
    Chan-merged chunk by chunk (module docstring). The final statistics when P is one split, else the partials
    (mean, M2, co-moment) of the split: part_v [S, L, 3, C, N], part_e [S, L, 2, N], fp32."""
    pid_s = tl.program_id(1).to(tl.int64)
    layer = tl.program_id(2).to(tl.int64)
    rc, rn, e_cols = _dendrite_tile(C, N, BLOCK_C, BLOCK_N)
    n_in = e_cols < N  # [BC, BN]
    cn_in = (rc < C)[:, None] & n_in  # [BC, BN]
    v_row = v_ptr + layer * stride_vl + rc[:, None] * stride_vc + rn[None, :]  # [BC, BN]
    e_row = e_ptr + layer * stride_el + e_cols  # [BC, BN]
    # Every split shifts by the same row, so the partials merge without a change of origin.
    shift_v = tl.load(v_row, mask=cn_in, other=0.0).to(tl.float32)  # [BC, BN]
    shift_e = tl.load(e_row, mask=n_in, other=0.0).to(tl.float32)  # [BC, BN]
    mean_v = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    m2_v = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    co = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    mean_e = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    m2_e = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    start = pid_s * rows_per_split
    end = tl.minimum(start + rows_per_split, P)
    v_next, e_next = _dendrite_load_chunk(v_row, e_row, start, end, n_in, cn_in, stride_vp, stride_ep, BLOCK_P)
    for p0 in range(start, end, BLOCK_P):
        # The next chunk's loads are issued before this chunk's arithmetic: two chunks in flight per program.
        v = v_next.to(tl.float32)  # [BP, BC, BN]
        e = e_next.to(tl.float32)  # [BP, BC, BN]
        v_next, e_next = _dendrite_load_chunk(
            v_row, e_row, p0 + BLOCK_P, end, n_in, cn_in, stride_vp, stride_ep, BLOCK_P
        )
        p_in = (p0 + tl.arange(0, BLOCK_P).to(tl.int64) < end)[:, None, None]  # [BP, 1, 1]
        rows = tl.minimum(end - p0, BLOCK_P).to(tl.float32)
        d_v = tl.where(p_in, v - shift_v[None, :, :], 0.0)  # [BP, BC, BN]
        d_e = tl.where(p_in, e - shift_e[None, :, :], 0.0)  # [BP, BC, BN]
        chunk_mean_v = tl.sum(d_v, 0) / rows  # [BC, BN]
        chunk_mean_e = tl.sum(d_e, 0) / rows  # [BC, BN]
        dev_v = tl.where(p_in, d_v - chunk_mean_v[None, :, :], 0.0)  # [BP, BC, BN]
        dev_e = tl.where(p_in, d_e - chunk_mean_e[None, :, :], 0.0)  # [BP, BC, BN]
        # Σ dev is zero in exact arithmetic; subtracting its square removes the rounding of the chunk mean.
        sum_v = tl.sum(dev_v, 0)  # [BC, BN]
        sum_e = tl.sum(dev_e, 0)  # [BC, BN]
        chunk_m2_v = tl.sum(dev_v * dev_v, 0) - sum_v * sum_v / rows  # [BC, BN]
        chunk_m2_e = tl.sum(dev_e * dev_e, 0) - sum_e * sum_e / rows  # [BC, BN]
        chunk_co = tl.sum(dev_v * dev_e, 0) - sum_v * sum_e / rows  # [BC, BN]
        mean_v, m2_v, co, mean_e, m2_e = _dendrite_chan(
            (p0 - start).to(tl.float32), rows, mean_v, m2_v, co, mean_e, m2_e,
            chunk_mean_v, chunk_m2_v, chunk_co, chunk_mean_e, chunk_m2_e,
        )  # fmt: skip
    if SPLIT:
        part_v = part_v_ptr + (pid_s * L + layer) * 3 * C * N + rc[:, None] * N + rn[None, :]  # [BC, BN]
        part_e = part_e_ptr + (pid_s * L + layer) * 2 * N + e_cols  # [BC, BN]
        e_in = (rc == 0)[:, None] & n_in  # [BC, BN]
        tl.store(part_v, mean_v, mask=cn_in)
        tl.store(part_v + C * N, m2_v, mask=cn_in)
        tl.store(part_v + 2 * C * N, co, mask=cn_in)
        tl.store(part_e, mean_e, mask=e_in)
        tl.store(part_e + N, m2_e, mask=e_in)
    else:
        _dendrite_finish(
            shift_v, shift_e, mean_v, m2_v, co, mean_e, m2_e,
            v_mean_ptr, e_mean_ptr, cov_ptr, v_var_ptr, e_var_ptr, layer, rc, rn, e_cols, P, C, N,
        )  # fmt: skip


@triton.jit
def _dendrite_merge_fwd_kernel(
    v_ptr,
    e_ptr,
    part_v_ptr,
    part_e_ptr,
    v_mean_ptr,
    e_mean_ptr,
    cov_ptr,
    v_var_ptr,
    e_var_ptr,
    L,
    P,
    C,
    N,
    splits,
    rows_per_split,
    stride_vl,
    stride_vc,
    stride_el,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The final statistics from the S partials of ``_dendrite_stats_fwd_kernel``, Chan-merged in split order.
    Split s holds min(rows_per_split, P − s·rows_per_split) rows; the shift is V[l, 0] and E[l, 0] again."""
    layer = tl.program_id(1).to(tl.int64)
    rc, rn, e_cols = _dendrite_tile(C, N, BLOCK_C, BLOCK_N)
    n_in = e_cols < N  # [BC, BN]
    cn_in = (rc < C)[:, None] & n_in  # [BC, BN]
    v_row = v_ptr + layer * stride_vl + rc[:, None] * stride_vc + rn[None, :]  # [BC, BN]
    shift_v = tl.load(v_row, mask=cn_in, other=0.0).to(tl.float32)  # [BC, BN]
    shift_e = tl.load(e_ptr + layer * stride_el + e_cols, mask=n_in, other=0.0).to(tl.float32)  # [BC, BN]
    mean_v = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    m2_v = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    co = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    mean_e = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    m2_e = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for s in range(0, splits):
        first = s * rows_per_split
        rows = tl.minimum(rows_per_split, P - first).to(tl.float32)
        part_v = part_v_ptr + (s * L + layer) * 3 * C * N + rc[:, None] * N + rn[None, :]  # [BC, BN]
        part_e = part_e_ptr + (s * L + layer) * 2 * N + e_cols  # [BC, BN]
        mean_v, m2_v, co, mean_e, m2_e = _dendrite_chan(
            first.to(tl.float32), rows, mean_v, m2_v, co, mean_e, m2_e,
            tl.load(part_v, mask=cn_in, other=0.0),
            tl.load(part_v + C * N, mask=cn_in, other=0.0),
            tl.load(part_v + 2 * C * N, mask=cn_in, other=0.0),
            tl.load(part_e, mask=n_in, other=0.0),
            tl.load(part_e + N, mask=n_in, other=0.0),
        )  # fmt: skip
    _dendrite_finish(
        shift_v, shift_e, mean_v, m2_v, co, mean_e, m2_e,
        v_mean_ptr, e_mean_ptr, cov_ptr, v_var_ptr, e_var_ptr, layer, rc, rn, e_cols, P, C, N,
    )  # fmt: skip


@triton.jit
def _dendrite_grad_bwd_kernel(
    v_ptr,
    e_ptr,
    v_mean_ptr,
    e_mean_ptr,
    alpha_ptr,
    beta_ptr,
    out_ptr,
    P,
    C,
    N,
    rows_per_split,
    stride_vl,
    stride_vp,
    stride_vc,
    stride_el,
    stride_ep,
    stride_ol,
    stride_op,
    stride_oc,
    HAS_BETA: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out [L, P, C, N] = α ⊙ (E − e_mean) + β ⊙ (V − v_mean), α, β, v_mean [L, C, N] and e_mean [L, N] fp32
    contiguous: the gradient of Σ_{c,n} g·score through cov and v_var (Fahlman & Lebiere 1990: ∂S/∂V_p =
    σ·(E_p − Ē)). Without β (mode "cc") V is never read."""
    pid_s = tl.program_id(1).to(tl.int64)
    layer = tl.program_id(2).to(tl.int64)
    rc, rn, e_cols = _dendrite_tile(C, N, BLOCK_C, BLOCK_N)
    n_in = e_cols < N  # [BC, BN]
    cn_in = (rc < C)[:, None] & n_in  # [BC, BN]
    off_cn = (layer * C + rc[:, None]) * N + rn[None, :]  # [BC, BN]
    alpha = tl.load(alpha_ptr + off_cn, mask=cn_in, other=0.0)  # [BC, BN]
    e_mean = tl.load(e_mean_ptr + layer * N + e_cols, mask=n_in, other=0.0)  # [BC, BN]
    if HAS_BETA:
        beta = tl.load(beta_ptr + off_cn, mask=cn_in, other=0.0)  # [BC, BN]
        v_mean = tl.load(v_mean_ptr + off_cn, mask=cn_in, other=0.0)  # [BC, BN]
    v_row = v_ptr + layer * stride_vl + rc[:, None] * stride_vc + rn[None, :]  # [BC, BN]
    e_row = e_ptr + layer * stride_el + e_cols  # [BC, BN]
    o_row = out_ptr + layer * stride_ol + rc[:, None] * stride_oc + rn[None, :]  # [BC, BN]
    start = pid_s * rows_per_split
    end = tl.minimum(start + rows_per_split, P)
    for p0 in range(start, end, BLOCK_P):
        rp = p0 + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
        tile_in = (rp < end)[:, None, None] & cn_in[None, :, :]  # [BP, BC, BN]
        e = tl.load(e_row[None, :, :] + rp[:, None, None] * stride_ep, mask=tile_in, other=0.0).to(tl.float32)
        out = alpha[None, :, :] * (e - e_mean[None, :, :])  # [BP, BC, BN]
        if HAS_BETA:
            v = tl.load(v_row[None, :, :] + rp[:, None, None] * stride_vp, mask=tile_in, other=0.0).to(tl.float32)
            out += beta[None, :, :] * (v - v_mean[None, :, :])
        out = round_to(out, out_ptr.dtype.element_ty, INTERPRET)
        tl.store(o_row[None, :, :] + rp[:, None, None] * stride_op, out, mask=tile_in)


# V elements per chunk of a program: 32 a thread at 4 warps; 8 KiB of 16-bit data, two chunks in flight.
_TILE = 4096
# Programs to aim for, per SM, before P is split: whole waves at 2 or 3 resident programs per SM (stats: ~170-190
# registers a thread), few enough splits that the partials cost ~0.3% of the traffic each.
_PROGRAMS_PER_SM = 6
# A split covers at least this many chunks, so the partials stay small next to V.
_MIN_CHUNKS_PER_SPLIT = 4


class _Blocks(NamedTuple):
    block_p: int
    block_c: int
    block_n: int
    splits: int
    rows_per_split: int
    warps: int


@functools.cache
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a few for the interpreter, so that its runs split P too."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _blocks(layers: int, p: int, c: int, n: int, dtype: torch.dtype, device: torch.device) -> _Blocks:
    """Tiles and the split of P, for stats and grad alike.

    BLOCK_C takes all candidates up to 8, so E is loaded once for them. BLOCK_N spans at least 256 bytes of a row
    (coalesced loads), and BLOCK_C x BLOCK_N at least one 16-byte load for every thread, so that a thread holds
    whole columns of a chunk and the reductions over P stay in its registers. BLOCK_P fills a chunk of _TILE
    elements. Tiles are not shrunk to small problems (masks cover the overhang): one variant per BLOCK_C and
    dtype, each compiled and checked by tests/test_kernel_compile.py. P is split until layers x neuron tiles x
    candidate tiles x splits reaches _PROGRAMS_PER_SM per SM, each split at least _MIN_CHUNKS_PER_SPLIT chunks
    long; rows_per_split is a multiple of BLOCK_P, and no split is empty.
    """
    warps = 4
    block_c = min(8, triton.next_power_of_2(max(c, 1)))
    per_load = 16 // dtype.itemsize
    block_n = max(256 // dtype.itemsize, 32 * warps * per_load // block_c)
    block_p = max(1, _TILE // (block_c * block_n))
    programs = layers * triton.cdiv(n, block_n) * triton.cdiv(max(c, 1), block_c)
    chunks = triton.cdiv(p, block_p)
    wanted = triton.cdiv(_PROGRAMS_PER_SM * _sm_count(device), max(programs, 1))
    splits = max(1, min(wanted, chunks // _MIN_CHUNKS_PER_SPLIT))
    rows_per_split = triton.cdiv(chunks, splits) * block_p
    return _Blocks(block_p, block_c, block_n, triton.cdiv(p, rows_per_split), rows_per_split, warps)


def _check_out(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous float32 tensor of shape {list(shape)}, "
            f"got {t.dtype} {list(t.shape)} with strides {tuple(t.stride())}"
        )


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(values: torch.Tensor, errors: torch.Tensor) -> None:
    if values.dim() != 4:
        raise ValueError(f"values must be [L, P, C, N], got {list(values.shape)}")
    layers, p, _, n = values.shape
    if tuple(errors.shape) != (layers, p, n):
        raise ValueError(f"errors must be [L, P, N] = {[layers, p, n]}, got {list(errors.shape)}")
    if values.dtype not in _DTYPES or errors.dtype != values.dtype:
        raise ValueError(
            f"values and errors must share one dtype of float32, float16, bfloat16, got {values.dtype}, {errors.dtype}"
        )


def stats(
    values: torch.Tensor,
    errors: torch.Tensor,
    v_mean: torch.Tensor,
    e_mean: torch.Tensor,
    cov: torch.Tensor,
    v_var: torch.Tensor,
    e_var: torch.Tensor,
) -> None:
    """Population statistics over P, written into the fp32 contiguous outputs:
    v_mean, cov = mean_p (V − v_mean)(E − e_mean), v_var = mean_p (V − v_mean)² [L, C, N];
    e_mean, e_var = mean_p (E − e_mean)² [L, N].

    values [L, P, C, N] and errors [L, P, N], float32, float16 or bfloat16 (one dtype), any strides; fp32
    accumulation, stable for data with a large offset and a small spread. P = 0 gives NaN everywhere.
    """
    _check_inputs(values, errors)
    layers, p, c, n = values.shape
    for name, t, shape in (("v_mean", v_mean, (layers, c, n)), ("e_mean", e_mean, (layers, n)),
                           ("cov", cov, (layers, c, n)), ("v_var", v_var, (layers, c, n)),
                           ("e_var", e_var, (layers, n))):  # fmt: skip
        _check_out(name, t, shape)
    if layers == 0 or n == 0:
        return
    if p == 0:
        for t in (v_mean, e_mean, cov, v_var, e_var):
            t.fill_(float("nan"))
        return
    values, errors = rows_contiguous(values), rows_contiguous(errors)
    blocks = _blocks(layers, p, c, n, values.dtype, values.device)
    grid_cn = triton.cdiv(n, blocks.block_n) * triton.cdiv(max(c, 1), blocks.block_c)
    split = blocks.splits > 1
    part_v = errors
    part_e = errors
    if split:
        part_v = torch.empty((blocks.splits, layers, 3, c, n), dtype=torch.float32, device=values.device)
        part_e = torch.empty((blocks.splits, layers, 2, n), dtype=torch.float32, device=values.device)
    v_arg = nonempty(values, errors)
    outs = [nonempty(t, e_mean) for t in (v_mean, e_mean, cov, v_var, e_var)]
    _dendrite_stats_fwd_kernel[(grid_cn, blocks.splits, layers)](
        v_arg, errors, nonempty(part_v, errors), part_e, *outs, layers, p, c, n, blocks.rows_per_split,
        values.stride(0), values.stride(1), values.stride(2), errors.stride(0), errors.stride(1),
        SPLIT=split, BLOCK_P=blocks.block_p, BLOCK_C=blocks.block_c, BLOCK_N=blocks.block_n,
        num_warps=blocks.warps,
    )  # fmt: skip
    if split:
        _dendrite_merge_fwd_kernel[(grid_cn, layers)](
            v_arg, errors, nonempty(part_v, errors), part_e, *outs, layers, p, c, n,
            blocks.splits, blocks.rows_per_split, values.stride(0), values.stride(2), errors.stride(0),
            BLOCK_C=blocks.block_c, BLOCK_N=blocks.block_n, num_warps=blocks.warps,
        )  # fmt: skip


def grad(
    values: torch.Tensor,
    errors: torch.Tensor,
    v_mean: torch.Tensor,
    e_mean: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """out [L, P, C, N] = alpha ⊙ (E − e_mean) + beta ⊙ (V − v_mean), computed in fp32 and stored in out's dtype.

    values [L, P, C, N] and errors [L, P, N] of one float dtype, any strides; v_mean, alpha, beta [L, C, N] and
    e_mean [L, N] float32; out has unit last-dimension stride. beta None drops the V term, and V is not read.
    """
    _check_inputs(values, errors)
    layers, p, c, n = values.shape
    if tuple(out.shape) != (layers, p, c, n):
        raise ValueError(f"out must be [L, P, C, N] = {[layers, p, c, n]}, got {list(out.shape)}")
    if n > 1 and out.stride(-1) != 1:
        raise ValueError(f"out must have unit last-dimension stride, got strides {tuple(out.stride())}")
    if out.numel() == 0:
        return
    values, errors = rows_contiguous(values), rows_contiguous(errors)
    v_mean, e_mean, alpha = v_mean.float().contiguous(), e_mean.float().contiguous(), alpha.float().contiguous()
    has_beta = beta is not None
    beta_arg = beta.float().contiguous() if has_beta else alpha
    blocks = _blocks(layers, p, c, n, values.dtype, values.device)
    grid_cn = triton.cdiv(n, blocks.block_n) * triton.cdiv(c, blocks.block_c)
    _dendrite_grad_bwd_kernel[(grid_cn, blocks.splits, layers)](
        values, errors, v_mean, e_mean, alpha, beta_arg, out, p, c, n, blocks.rows_per_split,
        values.stride(0), values.stride(1), values.stride(2), errors.stride(0), errors.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        HAS_BETA=has_beta, INTERPRET=interpreting(),
        BLOCK_P=blocks.block_p, BLOCK_C=blocks.block_c, BLOCK_N=blocks.block_n,
        num_warps=blocks.warps,
    )  # fmt: skip
