"""Triton kernels of the 2:4 format: prune/compress (and mask), decompress, gather, CUTLASS metadata reorder.

The rules are those of ``perfkern.reference.sparse24`` (DESIGN §3.1): per group of 4 along K keep the two
largest |w|, ties to the lower index, NaN above every number; values in column order with -0.0 stored as +0.0;
one int16 metadata word per 16 columns, a nibble (idx0 | idx1 << 2) per group.

Each program owns BLOCK_R rows x BLOCK_W metadata words (16 columns each). The four groups of a word are
unrolled, so every tensor in a kernel is 2-D [BLOCK_R, BLOCK_W]. All are memory-bound: the launchers size
blocks to keep enough bytes in flight; decompress and gather move raw bits (integer views), so they are
exact for every value, NaN payloads included.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
        x0 = tl.load(src + 4 * q + 0, mask=inb, other=0.0).to(tl.float32)
        x1 = tl.load(src + 4 * q + 1, mask=inb, other=0.0).to(tl.float32)
        x2 = tl.load(src + 4 * q + 2, mask=inb, other=0.0).to(tl.float32)
        x3 = tl.load(src + 4 * q + 3, mask=inb, other=0.0).to(tl.float32)
        # NaN ranks above every number, so exactly two entries win even in a poisoned group.
        m0 = tl.where(x0 != x0, float("inf"), tl.abs(x0))
        m1 = tl.where(x1 != x1, float("inf"), tl.abs(x1))
        m2 = tl.where(x2 != x2, float("inf"), tl.abs(x2))
        m3 = tl.where(x3 != x3, float("inf"), tl.abs(x3))
        # rank_j: entries larger than j, or equal to it at a lower index; j is kept when rank_j < 2.
        k0 = ((m1 > m0).to(tl.int32) + (m2 > m0).to(tl.int32) + (m3 > m0).to(tl.int32)) < 2
        k1 = ((m0 >= m1).to(tl.int32) + (m2 > m1).to(tl.int32) + (m3 > m1).to(tl.int32)) < 2
        k2 = ((m0 >= m2).to(tl.int32) + (m1 >= m2).to(tl.int32) + (m3 > m2).to(tl.int32)) < 2
        k3 = ((m0 >= m3).to(tl.int32) + (m1 >= m3).to(tl.int32) + (m2 >= m3).to(tl.int32)) < 2
        if WRITE_VALUES:
            v0 = tl.where(k0, x0, tl.where(k1, x1, x2))
            v1 = tl.where(k3, x3, tl.where(k2, x2, x1))
            v0 = tl.where(v0 == 0.0, 0.0, v0)
            v1 = tl.where(v1 == 0.0, 0.0, v1)
            dst = values_ptr + r[:, None] * stride_values + w[None, :] * 8 + 2 * q
            tl.store(dst, v0.to(values_ptr.dtype.element_ty), mask=inb)
            tl.store(dst + 1, v1.to(values_ptr.dtype.element_ty), mask=inb)
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


def _grid(rows: int, words: int) -> tuple[tuple[int, int], int, int]:
    """Block shape and grid: wide along the words for coalescing, taller when rows are many and words few."""
    block_w = min(64, triton.next_power_of_2(max(words, 1)))
    block_r = max(1, min(64, 1024 // block_w, triton.next_power_of_2(max(rows, 1))))
    return (triton.cdiv(rows, block_r), triton.cdiv(words, block_w)), block_r, block_w


def compress(src: torch.Tensor, values, meta, mask) -> None:
    """Write any of values [N, K/2], meta [N, K/16] int16 and mask [N, K] uint8 from src [N, K]."""
    rows, cols = src.shape
    grid, block_r, block_w = _grid(rows, cols // 16)
    dummy = src
    _sparse24_compress_kernel[grid](
        src,
        values if values is not None else dummy,
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
