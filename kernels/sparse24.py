"""Triton kernels of the 2:4 format: prune/compress (and mask), decompress, gather, CUTLASS metadata reorder.

The rules are those of ``perfkern.reference.sparse24`` (DESIGN §3.1): per group of 4 along K keep the two
largest |w|, ties to the lower index, NaN above every number; values in column order with -0.0 stored as +0.0;
one int16 metadata word per 16 columns, a nibble (idx0 | idx1 << 2) per group.

Each program owns BLOCK_R rows x BLOCK_W metadata words (16 columns each). The four groups of a word are
unrolled, so every tensor in a kernel is 2-D [BLOCK_R, BLOCK_W]. All are memory-bound: the launchers size
blocks to keep enough bytes in flight; compress, decompress and gather move values as raw bits (integer views),
so they are exact for every value, NaN payloads included.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import empty
from ._rounding import dot_operand, interpreting, round_to


@triton.jit
def _sparse24_compress_kernel(
    src_ptr,
    values_ptr,
    meta_ptr,
    mask_ptr,
    rows,
    words,
    stride_src,
    stride_values,
    stride_meta,
    stride_mask,
    WRITE_VALUES: tl.constexpr,
    WRITE_META: tl.constexpr,
    WRITE_MASK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_w = tl.program_id(1).to(tl.int64)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # [BR]
    w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)  # [BW]
    inb = (r[:, None] < rows) & (w[None, :] < words)  # [BR, BW]
    src = src_ptr + r[:, None] * stride_src + w[None, :] * 16
    word = tl.zeros([BLOCK_R, BLOCK_W], dtype=tl.int32)
    for q in tl.static_range(4):
        # Ranks and zero tests in fp32 (exact for every 16-bit value); the kept entries move as raw bits.
        x0 = tl.load(src + 4 * q + 0, mask=inb, other=0.0)
        x1 = tl.load(src + 4 * q + 1, mask=inb, other=0.0)
        x2 = tl.load(src + 4 * q + 2, mask=inb, other=0.0)
        x3 = tl.load(src + 4 * q + 3, mask=inb, other=0.0)
        f0, f1, f2, f3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        # NaN ranks above every number, so exactly two entries win even in a poisoned group.
        m0 = tl.where(f0 != f0, float("inf"), tl.abs(f0))
        m1 = tl.where(f1 != f1, float("inf"), tl.abs(f1))
        m2 = tl.where(f2 != f2, float("inf"), tl.abs(f2))
        m3 = tl.where(f3 != f3, float("inf"), tl.abs(f3))
        # rank_j: entries larger than j, or equal to it at a lower index; j is kept when rank_j < 2.
        k0 = ((m1 > m0).to(tl.int32) + (m2 > m0).to(tl.int32) + (m3 > m0).to(tl.int32)) < 2
        k1 = ((m0 >= m1).to(tl.int32) + (m2 > m1).to(tl.int32) + (m3 > m1).to(tl.int32)) < 2
        k2 = ((m0 >= m2).to(tl.int32) + (m1 >= m2).to(tl.int32) + (m3 > m2).to(tl.int32)) < 2
        k3 = ((m0 >= m3).to(tl.int32) + (m1 >= m3).to(tl.int32) + (m2 >= m3).to(tl.int32)) < 2
        if WRITE_VALUES:
            # values_ptr is an integer view: NaN payloads survive, as in decompress and gather (a float
            # conversion on the way would be free to rewrite them); only a zero is rewritten, to +0.0.
            bits_ty = values_ptr.dtype.element_ty
            b0, b1 = x0.to(bits_ty, bitcast=True), x1.to(bits_ty, bitcast=True)
            b2, b3 = x2.to(bits_ty, bitcast=True), x3.to(bits_ty, bitcast=True)
            v0 = tl.where(k0, b0, tl.where(k1, b1, b2))
            v1 = tl.where(k3, b3, tl.where(k2, b2, b1))
            zero0 = tl.where(k0, f0, tl.where(k1, f1, f2)) == 0.0
            zero1 = tl.where(k3, f3, tl.where(k2, f2, f1)) == 0.0
            dst = values_ptr + r[:, None] * stride_values + w[None, :] * 8 + 2 * q
            tl.store(dst, tl.where(zero0, 0, v0), mask=inb)
            tl.store(dst + 1, tl.where(zero1, 0, v1), mask=inb)
        if WRITE_META:
            idx0 = tl.where(k0, 0, tl.where(k1, 1, 2))
            idx1 = tl.where(k3, 3, tl.where(k2, 2, 1))
            word = word | ((idx0 | (idx1 << 2)) << (4 * q))
        if WRITE_MASK:
            dst_mask = mask_ptr + r[:, None] * stride_mask + w[None, :] * 16 + 4 * q
            tl.store(dst_mask + 0, k0.to(tl.uint8), mask=inb)
            tl.store(dst_mask + 1, k1.to(tl.uint8), mask=inb)
            tl.store(dst_mask + 2, k2.to(tl.uint8), mask=inb)
            tl.store(dst_mask + 3, k3.to(tl.uint8), mask=inb)
    if WRITE_META:
        tl.store(meta_ptr + r[:, None] * stride_meta + w[None, :], word.to(tl.int16), mask=inb)


@triton.jit
def _sparse24_decompress_kernel(
    values_ptr,
    meta_ptr,
    dense_ptr,
    rows,
    words,
    stride_values,
    stride_meta,
    stride_dense,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_w = tl.program_id(1).to(tl.int64)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # [BR]
    w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)  # [BW]
    inb = (r[:, None] < rows) & (w[None, :] < words)  # [BR, BW]
    word = tl.load(meta_ptr + r[:, None] * stride_meta + w[None, :], mask=inb, other=0).to(tl.int32)
    src = values_ptr + r[:, None] * stride_values + w[None, :] * 8
    dst = dense_ptr + r[:, None] * stride_dense + w[None, :] * 16
    for q in tl.static_range(4):
        nibble = (word >> (4 * q)) & 0xF
        idx0 = nibble & 3
        idx1 = (nibble >> 2) & 3
        v0 = tl.load(src + 2 * q, mask=inb, other=0)
        v1 = tl.load(src + 2 * q + 1, mask=inb, other=0)
        # The second index wins, so even malformed metadata decodes the same way on every backend.
        for p in tl.static_range(4):
            out = tl.where(idx1 == p, v1, tl.where(idx0 == p, v0, 0))
            tl.store(dst + 4 * q + p, out, mask=inb)


@triton.jit
def _sparse24_gather_kernel(
    dense_ptr,
    meta_ptr,
    values_ptr,
    rows,
    words,
    stride_dense,
    stride_meta,
    stride_values,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_w = tl.program_id(1).to(tl.int64)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # [BR]
    w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)  # [BW]
    inb = (r[:, None] < rows) & (w[None, :] < words)  # [BR, BW]
    word = tl.load(meta_ptr + r[:, None] * stride_meta + w[None, :], mask=inb, other=0).to(tl.int32)
    src = dense_ptr + r[:, None] * stride_dense + w[None, :] * 16
    dst = values_ptr + r[:, None] * stride_values + w[None, :] * 8
    for q in tl.static_range(4):
        nibble = (word >> (4 * q)) & 0xF
        v0 = tl.load(src + 4 * q + (nibble & 3), mask=inb, other=0)
        v1 = tl.load(src + 4 * q + ((nibble >> 2) & 3), mask=inb, other=0)
        tl.store(dst + 2 * q, v0, mask=inb)
        tl.store(dst + 2 * q + 1, v1, mask=inb)


@triton.jit
def _sparse24_meta_reorder_kernel(
    src_ptr,
    dst_ptr,
    rows,
    cols,
    TO_CUTLASS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Canonical int16 meta (r, c) <-> torch's semi-structured CUTLASS layout: CUTLASS sm80 reads metadata as
    ColumnMajorInterleaved<2>, rows interleaved by 8 within each 32-row group, 2x2 blocks transposed."""
    pid_r = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # [BR]
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # [BC]
    inb = (r[:, None] < rows) & (c[None, :] < cols)  # [BR, BC]
    dst_row = (r // 32) * 32 + (r % 8) * 4 + (r % 32) // 8  # [BR]
    row2 = dst_row[:, None] + tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int64)
    col2 = c[None, :] + tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int64)
    swap = ((row2 % 2 == 0) & (col2 % 2 == 1)).to(tl.int64) - ((row2 % 2 == 1) & (col2 % 2 == 0)).to(tl.int64)
    row2 = row2 + swap
    col2 = col2 - swap
    offset = (col2 // 2) * rows * 2 + row2 * 2 + col2 % 2
    canonical = r[:, None] * cols + c[None, :]
    if TO_CUTLASS:
        tl.store(dst_ptr + offset, tl.load(src_ptr + canonical, mask=inb), mask=inb)
    else:
        tl.store(dst_ptr + canonical, tl.load(src_ptr + offset, mask=inb), mask=inb)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The same memory as integers of the element width, for kernels that only move bits."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


# (BLOCK_R, BLOCK_W) of the format kernels, in metadata words (16 columns each): 1024 words a program, wide along
# a row for coalescing, tall when rows have few words. Masks cover the overhang of small matrices, so two shapes
# serve every problem: two compiled variants per kernel and dtype, all checked by tests/test_kernel_compile.py.
FORMAT_TILES = ((16, 64), (64, 16))


def _grid(rows: int, words: int) -> tuple[tuple[int, int], int, int]:
    """Grid and (BLOCK_R, BLOCK_W) from FORMAT_TILES for a rows x words problem."""
    block_r, block_w = FORMAT_TILES[0] if words >= FORMAT_TILES[0][1] else FORMAT_TILES[1]
    return (triton.cdiv(rows, block_r), triton.cdiv(words, block_w)), block_r, block_w


def compress(src: torch.Tensor, values, meta, mask) -> None:
    """Write any of values [N, K/2], meta [N, K/16] int16 and mask [N, K] uint8 from src [N, K]."""
    rows, cols = src.shape
    grid, block_r, block_w = _grid(rows, cols // 16)
    dummy = src
    _sparse24_compress_kernel[grid](
        src,
        _bits(values) if values is not None else dummy,
        meta if meta is not None else dummy,
        mask if mask is not None else dummy,
        rows,
        cols // 16,
        src.stride(0),
        values.stride(0) if values is not None else 0,
        meta.stride(0) if meta is not None else 0,
        mask.stride(0) if mask is not None else 0,
        WRITE_VALUES=values is not None,
        WRITE_META=meta is not None,
        WRITE_MASK=mask is not None,
        BLOCK_R=block_r,
        BLOCK_W=block_w,
    )


def decompress(values: torch.Tensor, meta: torch.Tensor, dense: torch.Tensor) -> None:
    """dense [N, K] from values [N, K/2] and meta [N, K/16]."""
    rows, cols = dense.shape
    grid, block_r, block_w = _grid(rows, cols // 16)
    _sparse24_decompress_kernel[grid](
        _bits(values), meta, _bits(dense), rows, cols // 16,
        values.stride(0), meta.stride(0), dense.stride(0), BLOCK_R=block_r, BLOCK_W=block_w,
    )  # fmt: skip


def gather(dense: torch.Tensor, meta: torch.Tensor, values: torch.Tensor) -> None:
    """values [N, K/2] = the entries of dense [N, K] that meta names."""
    rows, cols = dense.shape
    grid, block_r, block_w = _grid(rows, cols // 16)
    _sparse24_gather_kernel[grid](
        _bits(dense), meta, _bits(values), rows, cols // 16,
        dense.stride(0), meta.stride(0), values.stride(0), BLOCK_R=block_r, BLOCK_W=block_w,
    )  # fmt: skip


def meta_reorder(src: torch.Tensor, dst: torch.Tensor, to_cutlass: bool) -> None:
    """Canonical meta <-> torch's CUTLASS layout; both contiguous [N, K/16] int16."""
    rows, cols = src.shape
    grid, block_r, block_c = _grid(rows, cols)
    _sparse24_meta_reorder_kernel[grid](
        src, dst, rows, cols, TO_CUTLASS=bool(to_cutlass), BLOCK_R=block_r, BLOCK_C=block_c
    )


@triton.jit
def _sparse24_mm_epilogue(
    acc,
    rm,
    rn,
    bias_ptr,
    lora_t_ptr,
    lora_b_ptr,
    out_ptr,
    M,
    N,
    R,
    scale,
    stride_bias,
    stride_tm,
    stride_tr,
    stride_bn,
    stride_br,
    stride_om,
    stride_on,
    HAS_BIAS: tl.constexpr,
    HAS_LORA: tl.constexpr,
    INTERPRET: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """out[rm, rn] = accᵀ + scale·T·Bᵀ + bias for an fp32 acc [BLOCK_N, BLOCK_M] that holds (x·Wsᵀ)ᵀ."""
    m_in = rm < M
    n_in = rn < N
    if HAS_LORA:
        # The rank is padded to BLOCK_R with zeros; its own accumulator lets scale apply once, in fp32.
        low = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R).to(tl.int64)  # [BR]
            r_in = rr < R
            ts = tl.load(
                lora_t_ptr + rm[:, None] * stride_tm + rr[None, :] * stride_tr,
                mask=m_in[:, None] & r_in[None, :],
                other=0.0,
            )  # [BM, BR]
            bs = tl.load(
                lora_b_ptr + rn[:, None] * stride_bn + rr[None, :] * stride_br,
                mask=n_in[:, None] & r_in[None, :],
                other=0.0,
            )  # [BN, BR]
            ts = dot_operand(ts, DOT, INTERPRET)
            bs = dot_operand(bs, DOT, INTERPRET)
            low = tl.dot(bs, tl.trans(ts), low, input_precision=PRECISION)
        acc += scale * low
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn * stride_bias, mask=n_in, other=0.0).to(tl.float32)[:, None]
    tl.store(
        out_ptr + rm[None, :] * stride_om + rn[:, None] * stride_on,
        round_to(acc, out_ptr.dtype.element_ty, INTERPRET),
        mask=n_in[:, None] & m_in[None, :],
    )


@triton.jit
def _sparse24_mm_kernel(
    x_ptr,
    values_ptr,
    meta_ptr,
    bias_ptr,
    lora_t_ptr,
    lora_b_ptr,
    out_ptr,
    M,
    N,
    K,
    R,
    k_per_split,
    scale,
    stride_xm,
    stride_xk,
    stride_vn,
    stride_vk,
    stride_en,
    stride_ek,
    stride_bias,
    stride_tm,
    stride_tr,
    stride_bn,
    stride_br,
    stride_os,
    stride_om,
    stride_on,
    SPLIT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_LORA: tl.constexpr,
    INTERPRET: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """out = x·Wsᵀ + bias + scale·T·Bᵀ, Ws = decompress(values, meta) 2:4 along K, T [M, r], B [N, r]
    (DESIGN §3.3: SLoPe, Mozaffari et al., ICLR 2025; 2:4 format of Mishra et al., arXiv 2104.08378).

    Position p of every group of 4 is its own plane: x[:, 4g + p] and Ws[:, 4g + p] = v1 if idx1 == p, else v0
    if idx0 == p, else 0. A chunk of BLOCK_K = 4·G columns is four products of width G, so the weight tile is
    decoded by selects on [BLOCK_N, G] planes and never interleaved. The accumulator is [BLOCK_N, BLOCK_M]
    (outᵀ): the decoded weight is the left operand and a small M sits in the MMA's narrow dimension.

    SPLIT (split-K): program s of the third grid axis sums only columns [s·k_per_split, (s + 1)·k_per_split) and
    stores that fp32 partial of x·Wsᵀ to out = the workspace [S, M, N]; _sparse24_mm_reduce_kernel adds the
    partials, the bias and the low-rank term. k_per_split is a multiple of 16, so slices hold whole meta words.
    """
    pid_n = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    GROUPS: tl.constexpr = BLOCK_K // 4
    WORDS: tl.constexpr = BLOCK_K // 16
    if SPLIT:
        # K bounds stay int32 like K itself (the offsets below are int64): int64 ones cost the loop registers.
        k_lo = tl.program_id(2) * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
    else:
        k_lo = 0
        k_hi = K
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    m_in = rm < M
    n_in = rn < N
    shifts = 4 * tl.arange(0, 4)  # [4]
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)  # [BK]
        rv = k0 // 2 + tl.arange(0, 2 * GROUPS).to(tl.int64)  # [BK/2]
        rw = k0 // 16 + tl.arange(0, WORDS).to(tl.int64)  # [BK/16]
        xs = tl.load(
            x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk,
            mask=m_in[:, None] & (rk < k_hi)[None, :],
            other=0.0,
        )  # [BM, BK]
        vs = tl.load(
            values_ptr + rn[:, None] * stride_vn + rv[None, :] * stride_vk,
            mask=n_in[:, None] & (rv < k_hi // 2)[None, :],
            other=0.0,
        )  # [BN, BK/2]
        words = tl.load(
            meta_ptr + rn[:, None] * stride_en + rw[None, :] * stride_ek,
            mask=n_in[:, None] & (rw < k_hi // 16)[None, :],
            other=0,
        ).to(tl.int32)  # [BN, BK/16]
        xs = dot_operand(xs, DOT, INTERPRET)
        vs = dot_operand(vs, DOT, INTERPRET)
        # Column k = 4g + 2h + l of the chunk: splitting l then h leaves one [., G] plane per position p = 2h + l.
        x_even, x_odd = tl.split(tl.reshape(xs, [BLOCK_M, GROUPS, 2, 2]))
        x0, x2 = tl.split(x_even)  # [BM, G]
        x1, x3 = tl.split(x_odd)  # [BM, G]
        v0, v1 = tl.split(tl.reshape(vs, [BLOCK_N, GROUPS, 2]))  # [BN, G]
        # int16 words sign-extend; the & keeps only the nibble, so bit 15 set is harmless.
        nibble = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & 0xF, [BLOCK_N, GROUPS])  # [BN, G]
        idx0 = nibble & 3
        idx1 = nibble >> 2
        zero = tl.zeros_like(v0)
        # The second index wins, as in decompress, so every backend decodes malformed metadata alike.
        w0 = tl.where(idx1 == 0, v1, tl.where(idx0 == 0, v0, zero))  # [BN, G]
        w1 = tl.where(idx1 == 1, v1, tl.where(idx0 == 1, v0, zero))  # [BN, G]
        w2 = tl.where(idx1 == 2, v1, tl.where(idx0 == 2, v0, zero))  # [BN, G]
        w3 = tl.where(idx1 == 3, v1, tl.where(idx0 == 3, v0, zero))  # [BN, G]
        acc = tl.dot(w0, tl.trans(x0), acc, input_precision=PRECISION)
        acc = tl.dot(w1, tl.trans(x1), acc, input_precision=PRECISION)
        acc = tl.dot(w2, tl.trans(x2), acc, input_precision=PRECISION)
        acc = tl.dot(w3, tl.trans(x3), acc, input_precision=PRECISION)
    if SPLIT:
        tl.store(
            out_ptr + tl.program_id(2).to(tl.int64) * stride_os + rm[None, :] * stride_om + rn[:, None] * stride_on,
            acc,
            mask=n_in[:, None] & m_in[None, :],
        )
    else:
        _sparse24_mm_epilogue(
            acc, rm, rn, bias_ptr, lora_t_ptr, lora_b_ptr, out_ptr, M, N, R, scale,
            stride_bias, stride_tm, stride_tr, stride_bn, stride_br, stride_om, stride_on,
            HAS_BIAS, HAS_LORA, INTERPRET, DOT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_R,
        )  # fmt: skip


@triton.jit
def _sparse24_mm_reduce_kernel(
    part_ptr,
    bias_ptr,
    lora_t_ptr,
    lora_b_ptr,
    out_ptr,
    M,
    N,
    R,
    S,
    scale,
    stride_ps,
    stride_pm,
    stride_pn,
    stride_bias,
    stride_tm,
    stride_tr,
    stride_bn,
    stride_br,
    stride_om,
    stride_on,
    HAS_BIAS: tl.constexpr,
    HAS_LORA: tl.constexpr,
    INTERPRET: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """out = Σ_s part[s] + bias + scale·T·Bᵀ: the split-K partials [S, M, N] summed in slice order (no atomics,
    so the result is the same bits on every run), then the epilogue of the unsplit kernel, applied once."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    inb = (rn < N)[:, None] & (rm < M)[None, :]  # [BN, BM]
    part = part_ptr + rm[None, :] * stride_pm + rn[:, None] * stride_pn
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for _ in range(0, S):
        acc += tl.load(part, mask=inb, other=0.0)  # [BN, BM]
        part += stride_ps
    _sparse24_mm_epilogue(
        acc, rm, rn, bias_ptr, lora_t_ptr, lora_b_ptr, out_ptr, M, N, R, scale,
        stride_bias, stride_tm, stride_tr, stride_bn, stride_br, stride_om, stride_on,
        HAS_BIAS, HAS_LORA, INTERPRET, DOT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_R,
    )  # fmt: skip


@triton.jit
def _sparse24_weight_grad_kernel(
    dy_ptr,
    x_ptr,
    meta_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_dm,
    stride_dn,
    stride_xm,
    stride_xk,
    stride_en,
    stride_ek,
    stride_on,
    stride_ok,
    INTERPRET: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out_values = gather(dyᵀ·x, meta): the entries of G = dy[M, N]ᵀ·x[M, K] that meta keeps, in column order
    (DESIGN §3.3, dWs = mask ⊙ dyᵀ·x). A [BLOCK_N, BLOCK_K] tile of G is reduced over M in fp32 and picked from
    on chip; only BLOCK_K / 2 values per row leave the program."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    GROUPS: tl.constexpr = BLOCK_K // 4
    WORDS: tl.constexpr = BLOCK_K // 16
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)  # [BK]
    rv = pid_k * (BLOCK_K // 2) + tl.arange(0, 2 * GROUPS).to(tl.int64)  # [BK/2]
    rw = pid_k * WORDS + tl.arange(0, WORDS).to(tl.int64)  # [BK/16]
    n_in = rn < N
    k_in = rk < K
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
        m_in = rm < M
        dys = tl.load(
            dy_ptr + rm[None, :] * stride_dm + rn[:, None] * stride_dn, mask=n_in[:, None] & m_in[None, :], other=0.0
        )  # [BN, BM]
        xs = tl.load(
            x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk, mask=m_in[:, None] & k_in[None, :], other=0.0
        )  # [BM, BK]
        dys = dot_operand(dys, DOT, INTERPRET)
        xs = dot_operand(xs, DOT, INTERPRET)
        acc = tl.dot(dys, xs, acc, input_precision=PRECISION)
    # Column k = 4g + 2h + l of the tile: splitting l then h leaves one [BN, G] plane per position p = 2h + l.
    g_even, g_odd = tl.split(tl.reshape(acc, [BLOCK_N, GROUPS, 2, 2]))
    g0, g2 = tl.split(g_even)  # [BN, G]
    g1, g3 = tl.split(g_odd)  # [BN, G]
    words = tl.load(
        meta_ptr + rn[:, None] * stride_en + rw[None, :] * stride_ek,
        mask=n_in[:, None] & (rw < K // 16)[None, :],
        other=0,
    ).to(tl.int32)  # [BN, BK/16]
    shifts = 4 * tl.arange(0, 4)  # [4]
    nibble = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & 0xF, [BLOCK_N, GROUPS])  # [BN, G]
    idx0 = nibble & 3
    idx1 = nibble >> 2
    v0 = tl.where(idx0 == 0, g0, tl.where(idx0 == 1, g1, tl.where(idx0 == 2, g2, g3)))  # [BN, G]
    v1 = tl.where(idx1 == 0, g0, tl.where(idx1 == 1, g1, tl.where(idx1 == 2, g2, g3)))  # [BN, G]
    kept = tl.reshape(tl.join(v0, v1), [BLOCK_N, 2 * GROUPS])  # [BN, BK/2]
    tl.store(
        out_ptr + rn[:, None] * stride_on + rv[None, :] * stride_ok,
        round_to(kept, out_ptr.dtype.element_ty, INTERPRET),
        mask=n_in[:, None] & (rv < K // 2)[None, :],
    )


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands multiply in IEEE fp32 to match an fp32 reference; 16-bit ones take the tensor cores as is."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """What the dots of mm and weight_grad take: the inputs' own dtype (bf16 and fp16 on the tensor cores)."""
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


class _MMConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    block_r: int
    warps: int
    splits: int
    k_per_split: int


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) of mm by M. Small M (decode) is bound by the weight bytes: narrow N tiles
# give many programs to stream them, and long K chunks keep many bytes in flight per program. Larger M is bound by
# the MMAs: square 128-wide tiles. BLOCK_K of at least 64 gives each of the four position planes 16 columns, the
# smallest dot. fp32 dots run IEEE on the CUDA cores with both operands in registers, so their tiles are smaller
# (the 16-bit ones spill there). Tiles are not shrunk to small problems (masks cover the overhang): three shapes
# per dtype class serve every problem, so the JIT compiles few variants, and tests/test_kernel_compile.py compiles
# each for sm_80 and sm_90 and checks its instructions and that it does not spill.
MM_TILES = {"decode": (16, 32, 256, 4), "mid": (64, 64, 128, 4), "large": (128, 128, 64, 8)}
MM_TILES_FP32 = {"decode": (16, 32, 256, 4), "mid": (64, 32, 64, 4), "large": (64, 64, 64, 8)}
# The adapter rank is consumed 16 columns at a time (the smallest dot) in the epilogue, whatever r is.
MM_BLOCK_R = 16
# Split K until the grid holds this many programs per SM, each slice at least this many BLOCK_K chunks long.
_PROGRAMS_PER_SM = 2
_MIN_CHUNKS_PER_SPLIT = 4


@functools.cache
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; an H100's 132 elsewhere, so the interpreter takes the GPU's
    decisions."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _mm_config(
    m: int, n: int, k: int, r: int, sms: int, split_k: int | None = None, dtype: torch.dtype = torch.bfloat16
) -> _MMConfig:
    """The tile of MM_TILES (MM_TILES_FP32 for float32) for M, and the split of K.

    When the (N, M) grid has fewer than _PROGRAMS_PER_SM programs per SM (N = 4096 at decode: 128 programs for
    132 SMs), K is split in S slices, S the smallest power of two that reaches that many, as long as every slice
    keeps _MIN_CHUNKS_PER_SPLIT chunks and the fp32 partials move no more bytes than the weight itself; slices
    are whole chunks. A forced ``split_k`` cuts K into that many slices of whole 16-column meta words instead
    (fewer when K is too short).
    """
    tiles = MM_TILES_FP32 if dtype == torch.float32 else MM_TILES
    block_m, block_n, block_k, warps = tiles["decode" if m <= 16 else "mid" if m <= 64 else "large"]
    if split_k is None:
        programs = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
        chunks = triton.cdiv(k, block_k)
        # The partials' round trip, 8·S·M·N bytes, stays within the 16-bit compressed weight's 9/8·N·K bytes.
        most = min(chunks // _MIN_CHUNKS_PER_SPLIT, 9 * k // (64 * m))
        splits = 1
        while programs * splits < _PROGRAMS_PER_SM * sms and 2 * splits <= most:
            splits *= 2
        k_per_split = max(1, triton.cdiv(chunks, splits)) * block_k
    else:
        k_per_split = max(1, triton.cdiv(k // 16, split_k)) * 16
    return _MMConfig(block_m, block_n, block_k, MM_BLOCK_R, warps, max(1, triton.cdiv(k, k_per_split)), k_per_split)


def mm(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    lora_t: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scale: float,
    out: torch.Tensor,
    *,
    split_k: int | None = None,
) -> None:
    """out [M, N] = x [M, K]·Wsᵀ + bias [N] + scale·lora_t [M, r]·lora_b [N, r]ᵀ, Ws = decompress(values [N, K/2],
    meta [N, K/16]); bias and the low-rank pair are optional. Any strides; one float dtype for all but meta.

    Grids too small for the GPU split K (see ``_mm_config``): partial products go to an fp32 workspace [S, M, N]
    and a second kernel sums them in a fixed order, so results are deterministic. ``split_k`` forces the number
    of slices (tests); None chooses it.
    """
    if split_k is not None and split_k < 1:
        raise ValueError(f"split_k must be a positive number of K slices or None, got {split_k}")
    m, k = x.shape
    n = values.shape[0]
    r = lora_t.shape[1] if lora_t is not None else 0
    if m == 0 or n == 0:
        return
    cfg = _mm_config(m, n, k, r, _sm_count(x.device), split_k, x.dtype)
    split = cfg.splits > 1
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m))
    has_lora = lora_t is not None
    # Absent operands stand in as x: the kernels never load them.
    epilogue = (bias if bias is not None else x, lora_t if has_lora else x, lora_b if has_lora else x)
    epilogue_strides = (
        bias.stride(0) if bias is not None else 0,
        *(lora_t.stride() if has_lora else (0, 0)),
        *(lora_b.stride() if has_lora else (0, 0)),
    )
    flags = {
        "HAS_BIAS": bias is not None,
        "HAS_LORA": has_lora,
        "INTERPRET": interpreting(),
        "DOT": _dot_dtype(x.dtype),
        "PRECISION": _dot_precision(x.dtype),
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_R": cfg.block_r,
    }
    # Split, the first kernel writes fp32 partials [S, M, N]; unsplit, it writes out (a slice stride of 0 keeps
    # the unsplit kernel's specialisation independent of M).
    target = empty((cfg.splits, m, n), torch.float32, x.device) if split else out
    target_strides = target.stride() if split else (0, *out.stride())
    # The split kernel leaves the epilogue to the reduction: its flags off, it is one variant whatever the call.
    first_flags = {**flags, "HAS_BIAS": False, "HAS_LORA": False} if split else flags
    _sparse24_mm_kernel[(*grid, cfg.splits)](
        x, values, meta, *epilogue, target, m, n, k, r, cfg.k_per_split, float(scale),
        x.stride(0), x.stride(1), values.stride(0), values.stride(1), meta.stride(0), meta.stride(1),
        *epilogue_strides, *target_strides,
        SPLIT=split, BLOCK_K=cfg.block_k, num_warps=cfg.warps, **first_flags,
    )  # fmt: skip
    if split:
        _sparse24_mm_reduce_kernel[grid](
            target, *epilogue, out, m, n, r, cfg.splits, float(scale),
            *target.stride(), *epilogue_strides, *out.stride(),
            num_warps=cfg.warps, **flags,
        )  # fmt: skip


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) of weight_grad by dtype class: a [64, 128] gradient tile per program,
# reduced over M in chunks of 64 ([32, 64] in chunks of 32 for fp32, whose IEEE dots hold both operands in
# registers); one shape for every problem (masks cover the overhang).
WEIGHT_GRAD_TILES = {"16-bit": (64, 64, 128, 4), "fp32": (32, 32, 64, 4)}


def weight_grad(dy: torch.Tensor, x: torch.Tensor, meta: torch.Tensor, out_values: torch.Tensor) -> None:
    """out_values [N, K/2] = the entries of dy [M, N]ᵀ·x [M, K] that meta [N, K/16] keeps, accumulated in fp32;
    the dense [N, K] gradient is never stored. Any strides."""
    m, n = dy.shape
    k = x.shape[1]
    if n == 0 or k == 0:
        return
    block_m, block_n, block_k, warps = WEIGHT_GRAD_TILES["fp32" if x.dtype == torch.float32 else "16-bit"]
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _sparse24_weight_grad_kernel[grid](
        dy, x, meta, out_values, m, n, k,
        dy.stride(0), dy.stride(1), x.stride(0), x.stride(1), meta.stride(0), meta.stride(1),
        out_values.stride(0), out_values.stride(1),
        INTERPRET=interpreting(), DOT=_dot_dtype(x.dtype), PRECISION=_dot_precision(x.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
