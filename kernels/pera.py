"""Triton kernels of PERA, polynomial-expanded LoRA (DESIGN §3.4; PERA, arXiv 2604.11841).

With rows a_i of A [r, K], columns b_i of B [N, r] and the pairs P of the mode in ``torch.triu_indices(r, r)``
order, the expanded factors have r' = r + |P| rows/columns, indexed by q:

    Â[q] = c_q·a_{i_q} ⊙ ã_{j_q}        B̂[:, q] = b_{i_q} ⊙ b̃_{j_q}

with (i_q, j_q) = (q, q), c_q = 1 and ã = b̃ = 1 for the r first-order rows q < r, and (i_p, j_p), c_q = h_p,
ã = a, b̃ = b for pair p = q - r. One int32 index tensor [2, r'] per (r, mode) holds (i_q, j_q).

Â and B̂ never touch memory: every kernel generates the tiles it needs from A, B and h on chip, BLOCK_P rows of
Â (columns of B̂) at a time. Only Z = x·Âᵀ and dZ = s·G·B̂, [M, r'] each, go through memory, as LoRA's x·Aᵀ does.

    forward    Z = x·Âᵀ            (_pera_z_fwd_kernel: reads x once)
               out = s·Z·B̂ᵀ        (_pera_out_fwd_kernel: writes out once)
    backward   Z again, unless the caller kept it from the forward
               dZ = s·G·B̂          (_pera_dz_bwd_kernel: reads G)
               dB̂ = s·Gᵀ·Z → dB   (_pera_db_bwd_kernel: reads G, folds dB̂ into dB on chip)
               dÂ = dZᵀ·x → dA, dh (_pera_da_bwd_kernel: reads x, folds dÂ into dA and dh on chip)
               dx = dZ·Â           (_pera_dx_bwd_kernel: writes dx; never reads x)
    merge      ΔW = s·B̂·Â          (_pera_delta_fwd_kernel)

Programs that split r' into chunks of BLOCK_P take the chunk from the fastest grid axis, so the chunks of one
x (or G) tile run side by side and share it through L2: HBM sees x and G as often as LoRA's GEMMs do. The
folds scatter the rows of a dÂ (dB̂) tile to the rows of dA (dB) with one-hot [BLOCK_P, 16] matrices built from
the index vectors, as fp32 dots, 16 factor rows at a time; the reductions over M that the folds need are split
across programs into fp32 partials that torch sums in a fixed order (deterministic, no atomics).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import nonempty, rows_contiguous
from ._rounding import dot_operand, interpreting, round_to


@triton.jit
def _pera_index(idx_ptr, q, R, RH):
    """(i_q, j_q, q < r', q is a pair row) for the rows q [BP] of Â; rows past r' read as (0, 0)."""
    q_in = q < RH
    pair = q_in & (q >= R)
    ii = tl.load(idx_ptr + q, mask=q_in, other=0).to(tl.int64)
    jj = tl.load(idx_ptr + RH + q, mask=q_in, other=0).to(tl.int64)
    return ii, jj, q_in, pair


@triton.jit
def _pera_coef(h_ptr, q, pair, R):
    """c_q [BP]: h_{q-r} on pair rows, 1 elsewhere."""
    return tl.where(pair, tl.load(h_ptr + (q - R), mask=pair, other=0.0).to(tl.float32), 1.0)


@triton.jit
def _pera_a_factors(a_ptr, ii, jj, q_in, pair, rk, K, stride_a):
    """(a_{i_q}, ã_{j_q}) at columns rk, fp32 [BP, BK]: zero past K or r' in the first, one off the pairs in the
    second, so their product is the unscaled row of Â."""
    k_in = rk < K
    a_i = tl.load(a_ptr + ii[:, None] * stride_a + rk[None, :], mask=q_in[:, None] & k_in[None, :], other=0.0)
    a_j = tl.load(a_ptr + jj[:, None] * stride_a + rk[None, :], mask=pair[:, None] & k_in[None, :], other=1.0)
    return a_i.to(tl.float32), a_j.to(tl.float32)


@triton.jit
def _pera_b_factors(b_ptr, ii, jj, q_in, pair, rn, N, stride_b):
    """(b_{i_q}, b̃_{j_q}) at rows rn, fp32 [BN, BP], masked like ``_pera_a_factors``."""
    n_in = rn < N
    b_i = tl.load(b_ptr + rn[:, None] * stride_b + ii[None, :], mask=n_in[:, None] & q_in[None, :], other=0.0)
    b_j = tl.load(b_ptr + rn[:, None] * stride_b + jj[None, :], mask=n_in[:, None] & pair[None, :], other=1.0)
    return b_i.to(tl.float32), b_j.to(tl.float32)


@triton.jit
def _pera_a_hat(a_ptr, h_ptr, idx_ptr, q, rk, R, RH, K, stride_a):
    """Rows q [BP] of Â at columns rk [BK], fp32."""
    ii, jj, q_in, pair = _pera_index(idx_ptr, q, R, RH)
    a_i, a_j = _pera_a_factors(a_ptr, ii, jj, q_in, pair, rk, K, stride_a)
    return _pera_coef(h_ptr, q, pair, R)[:, None] * a_i * a_j


@triton.jit
def _pera_b_hat(b_ptr, idx_ptr, q, rn, R, RH, N, stride_b):
    """Columns q [BP] of B̂ at rows rn [BN], fp32."""
    ii, jj, q_in, pair = _pera_index(idx_ptr, q, R, RH)
    b_i, b_j = _pera_b_factors(b_ptr, ii, jj, q_in, pair, rn, N, stride_b)
    return b_i * b_j


@triton.jit
def _pera_z_fwd_kernel(
    x_ptr,
    a_ptr,
    h_ptr,
    idx_ptr,
    z_ptr,
    M,
    K,
    R,
    RH,
    stride_xm,
    stride_a,
    stride_zm,
    DOT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Z[:, chunk] = x·Â[chunk]ᵀ: the first GEMM of the PERA adapter (arXiv 2604.11841, Eq. 9), with the
    Â tile of every K step generated from two gathered rows of A."""
    pid_p = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
    m_in = rm < M
    ii, jj, q_in, pair = _pera_index(idx_ptr, q, R, RH)
    acc = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)  # [BK]
        mask = m_in[:, None] & (rk < K)[None, :]
        xs = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=mask, other=0.0)  # [BM, BK]
        a_i, a_j = _pera_a_factors(a_ptr, ii, jj, q_in, pair, rk, K, stride_a)  # [BP, BK]
        a_hat = dot_operand(a_i * a_j, DOT, INTERPRET)
        acc = tl.dot(dot_operand(xs, DOT, INTERPRET), tl.trans(a_hat), acc, input_precision="ieee")
    # h_p scales a whole column of Z, so it is applied once here rather than to every generated element.
    acc = acc * _pera_coef(h_ptr, q, pair, R)[None, :]
    tl.store(
        z_ptr + rm[:, None] * stride_zm + q[None, :],
        round_to(acc, z_ptr.dtype.element_ty, INTERPRET),
        mask=m_in[:, None] & q_in[None, :],
    )


@triton.jit
def _pera_out_fwd_kernel(
    z_ptr,
    b_ptr,
    idx_ptr,
    out_ptr,
    M,
    N,
    R,
    RH,
    scale,
    stride_zm,
    stride_b,
    stride_om,
    DOT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """out = s·Z·B̂ᵀ, reduced over r' in chunks of BLOCK_P with the B̂ tile generated from B's columns."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    m_in = rm < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for p0 in range(0, RH, BLOCK_P):
        q = p0 + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
        mask = m_in[:, None] & (q < RH)[None, :]
        zs = tl.load(z_ptr + rm[:, None] * stride_zm + q[None, :], mask=mask, other=0.0)  # [BM, BP]
        b_hat = dot_operand(_pera_b_hat(b_ptr, idx_ptr, q, rn, R, RH, N, stride_b), DOT, INTERPRET)  # [BN, BP]
        acc = tl.dot(dot_operand(zs, DOT, INTERPRET), tl.trans(b_hat), acc, input_precision="ieee")
    tl.store(
        out_ptr + rm[:, None] * stride_om + rn[None, :],
        round_to(scale * acc, out_ptr.dtype.element_ty, INTERPRET),
        mask=m_in[:, None] & (rn < N)[None, :],
    )


@triton.jit
def _pera_dz_bwd_kernel(
    g_ptr,
    b_ptr,
    idx_ptr,
    dz_ptr,
    M,
    N,
    R,
    RH,
    scale,
    stride_gm,
    stride_b,
    stride_dzm,
    DOT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """dZ[:, chunk] = s·G·B̂[:, chunk] (arXiv 2604.11841 backward: dZ = G_s·B̂), reduced over N."""
    pid_p = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
    m_in = rm < M
    acc = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
        mask = m_in[:, None] & (rn < N)[None, :]
        gs = tl.load(g_ptr + rm[:, None] * stride_gm + rn[None, :], mask=mask, other=0.0)  # [BM, BN]
        b_hat = dot_operand(_pera_b_hat(b_ptr, idx_ptr, q, rn, R, RH, N, stride_b), DOT, INTERPRET)  # [BN, BP]
        acc = tl.dot(dot_operand(gs, DOT, INTERPRET), b_hat, acc, input_precision="ieee")
    tl.store(
        dz_ptr + rm[:, None] * stride_dzm + q[None, :],
        round_to(scale * acc, dz_ptr.dtype.element_ty, INTERPRET),
        mask=m_in[:, None] & (q < RH)[None, :],
    )


@triton.jit
def _pera_db_bwd_kernel(
    g_ptr,
    z_ptr,
    b_ptr,
    idx_ptr,
    part_ptr,
    M,
    N,
    R,
    RH,
    scale,
    m_per_split,
    stride_gm,
    stride_zm,
    stride_b,
    stride_part,
    stride_pn,
    DOT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """A partial dB [BN, r] from the tile dB̂[:, chunk] = s·Gᵀ·Z[:, chunk] over one split of M: column q of dB̂
    goes to dB[:, i_q] times b̃_{j_q}, and a pair's also to dB[:, j_q] times b_{i_q} (arXiv 2604.11841 backward,
    dB = dB̂[:, :r] + Σ_j S_ij ⊙ b_j). dB̂ itself never leaves the program."""
    pid_p = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
    n_in = rn < N
    q_in = q < RH
    m_start = pid_s * m_per_split
    m_end = tl.minimum(M, m_start + m_per_split)
    acc = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
        m_in = rm < m_end
        mask = n_in[:, None] & m_in[None, :]
        gs = tl.load(g_ptr + rm[None, :] * stride_gm + rn[:, None], mask=mask, other=0.0)  # [BN, BM]
        mask = m_in[:, None] & q_in[None, :]
        zs = tl.load(z_ptr + rm[:, None] * stride_zm + q[None, :], mask=mask, other=0.0)  # [BM, BP]
        acc = tl.dot(dot_operand(gs, DOT, INTERPRET), dot_operand(zs, DOT, INTERPRET), acc, input_precision="ieee")
    acc = scale * acc
    ii, jj, q_in, pair = _pera_index(idx_ptr, q, R, RH)
    b_i, b_j = _pera_b_factors(b_ptr, ii, jj, q_in, pair, rn, N, stride_b)  # [BN, BP]
    # The rows of dB go 16 at a time (the smallest dot), so registers do not grow with r.
    d_b_i = acc * b_j  # [BN, BP]
    d_b_j = acc * b_i  # [BN, BP]
    part = part_ptr + (pid_p * tl.num_programs(2) + pid_s) * stride_part
    for r0 in range(0, R, 16):
        rr = r0 + tl.arange(0, 16).to(tl.int64)  # [16]
        to_i = ((ii[:, None] == rr[None, :]) & q_in[:, None]).to(tl.float32)  # [BP, 16]
        to_j = ((jj[:, None] == rr[None, :]) & pair[:, None]).to(tl.float32)  # [BP, 16]
        d_b = tl.dot(d_b_i, to_i, input_precision="ieee")
        d_b = tl.dot(d_b_j, to_j, d_b, input_precision="ieee")  # [BN, 16]
        tl.store(
            part + rn[:, None] * stride_pn + rr[None, :],
            round_to(d_b, part_ptr.dtype.element_ty, INTERPRET),
            mask=n_in[:, None] & (rr < R)[None, :],
        )


@triton.jit
def _pera_da_bwd_kernel(
    x_ptr,
    dz_ptr,
    a_ptr,
    h_ptr,
    idx_ptr,
    part_a_ptr,
    part_h_ptr,
    M,
    K,
    R,
    RH,
    m_per_split,
    stride_xm,
    stride_dzm,
    stride_a,
    stride_part_a,
    stride_pa,
    stride_part_h,
    DOT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """A partial dA [r, BK] and dh [chunk] from the tile dÂ[chunk] = dZ[:, chunk]ᵀ·x over one split of M
    (arXiv 2604.11841 backward): with u_q = a_{i_q} ⊙ ã_{j_q}, row q sends c_q·dÂ[q] ⊙ ã_{j_q} to dA[i_q], a pair
    row also c_q·dÂ[q] ⊙ a_{i_q} to dA[j_q], and dh_p = Σ_k dÂ[q, k]·u_q[k] over this K tile. dÂ itself never
    leaves the program."""
    pid_p = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)  # [BK]
    q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
    k_in = rk < K
    q_in = q < RH
    m_start = pid_s * m_per_split
    m_end = tl.minimum(M, m_start + m_per_split)
    acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
        m_in = rm < m_end
        mask = q_in[:, None] & m_in[None, :]
        dzs = tl.load(dz_ptr + rm[None, :] * stride_dzm + q[:, None], mask=mask, other=0.0)  # [BP, BM]
        mask = m_in[:, None] & k_in[None, :]
        xs = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=mask, other=0.0)  # [BM, BK]
        acc = tl.dot(dot_operand(dzs, DOT, INTERPRET), dot_operand(xs, DOT, INTERPRET), acc, input_precision="ieee")
    ii, jj, q_in, pair = _pera_index(idx_ptr, q, R, RH)
    a_i, a_j = _pera_a_factors(a_ptr, ii, jj, q_in, pair, rk, K, stride_a)  # [BP, BK]
    # dh_p takes dÂ[q] before h_p scales it, dA after.
    slot = pid_k * tl.num_programs(2) + pid_s
    d_h = tl.sum(acc * a_i * a_j, axis=1)  # [BP]
    tl.store(
        part_h_ptr + slot * stride_part_h + (q - R), round_to(d_h, part_h_ptr.dtype.element_ty, INTERPRET), mask=pair
    )
    acc = _pera_coef(h_ptr, q, pair, R)[:, None] * acc
    # The rows of dA go 16 at a time (the smallest dot), so registers do not grow with r.
    d_a_i = acc * a_j  # [BP, BK]
    d_a_j = acc * a_i  # [BP, BK]
    part = part_a_ptr + (pid_p * tl.num_programs(2) + pid_s) * stride_part_a
    for r0 in range(0, R, 16):
        rr = r0 + tl.arange(0, 16).to(tl.int64)  # [16]
        from_i = ((rr[:, None] == ii[None, :]) & q_in[None, :]).to(tl.float32)  # [16, BP]
        from_j = ((rr[:, None] == jj[None, :]) & pair[None, :]).to(tl.float32)  # [16, BP]
        d_a = tl.dot(from_i, d_a_i, input_precision="ieee")
        d_a = tl.dot(from_j, d_a_j, d_a, input_precision="ieee")  # [16, BK]
        tl.store(
            part + rr[:, None] * stride_pa + rk[None, :],
            round_to(d_a, part_a_ptr.dtype.element_ty, INTERPRET),
            mask=(rr < R)[:, None] & k_in[None, :],
        )


@triton.jit
def _pera_dx_bwd_kernel(
    dz_ptr,
    a_ptr,
    h_ptr,
    idx_ptr,
    dx_ptr,
    M,
    K,
    R,
    RH,
    stride_dzm,
    stride_a,
    stride_dxm,
    DOT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """dx = dZ·Â (arXiv 2604.11841 backward), reduced over r' in chunks with the Â tile generated on chip."""
    pid_k = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BM]
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)  # [BK]
    m_in = rm < M
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for p0 in range(0, RH, BLOCK_P):
        q = p0 + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
        mask = m_in[:, None] & (q < RH)[None, :]
        dzs = tl.load(dz_ptr + rm[:, None] * stride_dzm + q[None, :], mask=mask, other=0.0)  # [BM, BP]
        a_hat = dot_operand(_pera_a_hat(a_ptr, h_ptr, idx_ptr, q, rk, R, RH, K, stride_a), DOT, INTERPRET)  # [BP, BK]
        acc = tl.dot(dot_operand(dzs, DOT, INTERPRET), a_hat, acc, input_precision="ieee")
    tl.store(
        dx_ptr + rm[:, None] * stride_dxm + rk[None, :],
        round_to(acc, dx_ptr.dtype.element_ty, INTERPRET),
        mask=m_in[:, None] & (rk < K)[None, :],
    )


@triton.jit
def _pera_delta_fwd_kernel(
    a_ptr,
    b_ptr,
    h_ptr,
    idx_ptr,
    out_ptr,
    N,
    K,
    R,
    RH,
    scale,
    stride_a,
    stride_b,
    stride_on,
    DOT: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """ΔW = s·B̂·Â (arXiv 2604.11841, Eq. 4), both factors generated tile by tile, reduced over r'."""
    pid_k = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # [BN]
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)  # [BK]
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for p0 in range(0, RH, BLOCK_P):
        q = p0 + tl.arange(0, BLOCK_P).to(tl.int64)  # [BP]
        b_hat = dot_operand(_pera_b_hat(b_ptr, idx_ptr, q, rn, R, RH, N, stride_b), DOT, INTERPRET)  # [BN, BP]
        a_hat = dot_operand(_pera_a_hat(a_ptr, h_ptr, idx_ptr, q, rk, R, RH, K, stride_a), DOT, INTERPRET)  # [BP, BK]
        acc = tl.dot(b_hat, a_hat, acc, input_precision="ieee")
    tl.store(
        out_ptr + rn[:, None] * stride_on + rk[None, :],
        round_to(scale * acc, out_ptr.dtype.element_ty, INTERPRET),
        mask=(rn < N)[:, None] & (rk < K)[None, :],
    )


_MODES = ("full", "square", "cross")


@functools.cache
def _index(r: int, mode: str, device: torch.device) -> torch.Tensor:
    """int32 [2, r + |P|]: (i_q, j_q) for every row q of Â, first-order rows (q, q) then the mode's pairs in
    ``torch.triu_indices(r, r)`` order."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    i, j = torch.triu_indices(r, r)
    keep = {"full": i <= j, "square": i == j, "cross": i < j}[mode]
    first = torch.arange(r)
    rows = torch.stack([torch.cat([first, i[keep]]), torch.cat([first, j[keep]])])
    return rows.to(device=device, dtype=torch.int32).contiguous()


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """What the tensor cores see: 16-bit operands in their own dtype (fp32 accumulate), fp32 in IEEE fp32; the
    generated factors are rounded to it. The interpreter rounds the same way (``_rounding.dot_operand``)."""
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def intermediate_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of Z and dZ [M, r'] for inputs of ``dtype``: the inputs' own. Every consumer rounds them to the dot
    dtype, so storing them wider would only cost bytes."""
    return dtype


def _intermediate(m: int, r_hat: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An [M, r'] buffer for Z or dZ whose row stride is a multiple of 16, so that its rows load vectorised."""
    return torch.empty((m, triton.cdiv(r_hat, 16) * 16), dtype=intermediate_dtype(dtype), device=device)[:, :r_hat]


@functools.cache
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a few for the interpreter, so that its runs split M too."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


BLOCK_P_CHOICES = (32, 64, 128)


def _block_p(r_hat: int) -> int:
    """BLOCK_P, the rows of Â (columns of B̂) per chunk, one of BLOCK_P_CHOICES: the fewest padded rows plus a
    32-row charge per chunk, since every chunk re-reads its x or G tile (from L2). r' = 152 (r = 16, full) gives
    3 chunks of 64; r' = 560 (r = 32) 5 of 128; r' ≤ 32 one chunk of 32. ``_blocks`` may cap it."""
    return min(BLOCK_P_CHOICES, key=lambda bp: (triton.cdiv(r_hat, bp) * (bp + 32), bp))


# Per kernel: caps on its two tile dimensions (in the order ``_blocks`` takes them), on BLOCK_P and on
# block0·BLOCK_P, and its warps. With 16-bit operands (wgmma), output tiles are 128 wide and the reduced dimension
# of the G/x-streaming kernels is 64; the dB and dA folds hold the dB̂/dÂ tile and its two generated factors at
# once, and the out kernel generates a [BLOCK_N, BLOCK_P] B̂ tile per chunk, so those tiles are capped by area.
# fp32 dots run IEEE on the CUDA cores with both operands in registers, so their tiles are a quarter the size.
# Tiles are not shrunk to small problems (masks cover the overhang), so a kernel has one variant per BLOCK_P and
# dtype; tests/test_kernel_compile.py compiles each for sm_80 and sm_90 and checks its instructions and spills.
# The out kernel (BLOCK_P 64: 748 spill bytes on sm_80, 108 on sm_90), dx with BLOCK_P 128 and delta with
# BLOCK_P 64 or 128 (on sm_80) spilled registers at their former BLOCK_P caps; their chunks are narrower now (they
# reduce over r' inside one program, so a narrower chunk only means more iterations).
_CAPS_16BIT = {
    "z": (128, 64, 128, 1 << 14, 8),  # BLOCK_M, BLOCK_K (reduced)
    "out": (128, 128, 32, 1 << 14, 8),  # BLOCK_M, BLOCK_N
    "dz": (128, 64, 128, 1 << 14, 8),  # BLOCK_M, BLOCK_N (reduced)
    "db": (128, 64, 128, 1 << 13, 8),  # BLOCK_N, BLOCK_M (reduced)
    "da": (128, 64, 128, 1 << 13, 8),  # BLOCK_K, BLOCK_M (reduced)
    "dx": (128, 128, 64, 1 << 14, 8),  # BLOCK_M, BLOCK_K
    "delta": (128, 128, 32, 1 << 14, 8),  # BLOCK_N, BLOCK_K
}
_CAPS_FP32 = {
    "z": (64, 16, 32, 1 << 11, 4),
    "out": (64, 32, 32, 1 << 11, 4),
    "dz": (64, 16, 32, 1 << 11, 4),
    "db": (64, 16, 32, 1 << 11, 4),
    "da": (64, 16, 32, 1 << 11, 4),
    "dx": (64, 32, 16, 1 << 11, 4),
    "delta": (64, 32, 32, 1 << 11, 4),
}


def _blocks(kernel: str, dtype: torch.dtype, r_hat: int) -> tuple[int, int, int, int]:
    """(block0, block1, BLOCK_P, num_warps) for ``kernel`` with inputs of ``dtype`` (dimensions in the order of
    the ``_CAPS_*`` comments): the caps, block0 within the area cap."""
    caps = _CAPS_FP32 if dtype == torch.float32 else _CAPS_16BIT
    cap0, cap1, cap_p, area, warps = caps[kernel]
    block_p = min(cap_p, _block_p(r_hat))
    return min(cap0, area // block_p), cap1, block_p, warps


def _splits(programs: int, m: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(splits, rows per split) of the M reduction in the dB and dA kernels: enough splits to give every SM two
    programs, no split without rows; the rows per split are a multiple of block_m."""
    tiles = triton.cdiv(m, block_m)
    splits = max(1, min(tiles, triton.cdiv(2 * _sm_count(device), max(programs, 1))))
    per_split = triton.cdiv(tiles, splits) * block_m
    return triton.cdiv(m, per_split), per_split


def _check_out(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit column stride, got strides {tuple(t.stride())}")


def _z(x: torch.Tensor, lora_a: torch.Tensor, h: torch.Tensor, index: torch.Tensor, z: torch.Tensor) -> None:
    """z [M, r'] = x·Âᵀ for M, K > 0."""
    m, k = x.shape
    r, r_hat = lora_a.shape[0], index.shape[1]
    block_m, block_k, block_p, warps = _blocks("z", x.dtype, r_hat)
    grid = (triton.cdiv(r_hat, block_p), triton.cdiv(m, block_m))
    _pera_z_fwd_kernel[grid](
        x, lora_a, nonempty(h, lora_a), index, z, m, k, r, r_hat,
        x.stride(0), lora_a.stride(0), z.stride(0),
        DOT=_dot_dtype(x.dtype), INTERPRET=interpreting(),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip


def adapter(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    h: torch.Tensor,
    scale: float,
    mode: str,
    out: torch.Tensor,
    z: torch.Tensor | None = None,
) -> None:
    """out [M, N] = s·(x·Âᵀ)·B̂ᵀ, Â = [A ; h_p·(a_i ⊙ a_j)], B̂ = [B , b_i ⊙ b_j], for x [M, K], lora_a [r, K],
    lora_b [N, r], h [|P|] of ``mode``, all of one float dtype; fp32 accumulation. Inputs of any strides are
    taken; out has unit column stride. ``z`` [M, r + |P|] with unit column stride (``intermediate_dtype(x.dtype)``
    or fp32), if given, receives Z = x·Âᵀ so that ``adapter_backward`` need not read x for it again."""
    x, lora_a, lora_b, h = rows_contiguous(x), rows_contiguous(lora_a), rows_contiguous(lora_b), h.contiguous()
    _check_out("out", out)
    if z is not None:
        _check_out("z", z)
    m, k = x.shape
    n = out.shape[1]
    r = lora_a.shape[0]
    index = _index(r, mode, x.device)
    r_hat = index.shape[1]
    if m == 0:
        return
    if k == 0:
        out.zero_()
        if z is not None:
            z.zero_()
        return
    if z is None:
        z = _intermediate(m, r_hat, x.dtype, x.device)
    _z(x, lora_a, h, index, z)
    if n == 0:
        return
    block_m, block_n, block_p, warps = _blocks("out", x.dtype, r_hat)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _pera_out_fwd_kernel[grid](
        z, lora_b, index, out, m, n, r, r_hat, float(scale),
        z.stride(0), lora_b.stride(0), out.stride(0),
        DOT=_dot_dtype(x.dtype), INTERPRET=interpreting(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip


def _partials(parts: int, shape: tuple[int, ...], out: torch.Tensor) -> torch.Tensor:
    """[parts, *shape] fp32 partial sums, or out itself seen as the only partial when there is one."""
    if parts == 1 and out.numel() > 0:
        return out.unsqueeze(0)
    return torch.empty((parts, *shape), dtype=torch.float32, device=out.device)


def _reduce(part: torch.Tensor, out: torch.Tensor) -> None:
    """out = the sum of the partials, always in the same order; a lone partial was written to out directly."""
    if part.data_ptr() != out.data_ptr():
        out.copy_(part.sum(0))


def adapter_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    h: torch.Tensor,
    scale: float,
    mode: str,
    dx: torch.Tensor,
    d_a: torch.Tensor,
    d_b: torch.Tensor,
    d_h: torch.Tensor,
    z: torch.Tensor | None = None,
) -> None:
    """(dx [M, K], d_a [r, K], d_b [N, r], d_h [|P|]) of ``adapter`` for the upstream gradient grad [M, N]:
    with Z = x·Âᵀ and G_s = s·G, dZ = G_s·B̂, dx = dZ·Â, dÂ = dZᵀ·x and dB̂ = G_sᵀ·Z, folded into dA, dh and
    dB as in ``perfkern.reference.pera.pera_adapter_backward``. Inputs of any strides are taken; the outputs
    have unit column stride. ``z`` is the forward's Z, if the caller kept it."""
    grad, x, lora_a, lora_b, h = (
        rows_contiguous(grad),
        rows_contiguous(x),
        rows_contiguous(lora_a),
        rows_contiguous(lora_b),
        h.contiguous(),
    )
    for name, t in (("dx", dx), ("d_a", d_a), ("d_b", d_b), ("d_h", d_h)):
        _check_out(name, t)
    if z is not None:
        z = rows_contiguous(z)
    m, k = x.shape
    n = grad.shape[1]
    r = lora_a.shape[0]
    device = x.device
    index = _index(r, mode, device)
    r_hat = index.shape[1]
    if m == 0 or n == 0 or k == 0:
        # Some factor of every gradient is empty: G, x, or the K-long rows of A that Z and dh sum over.
        for t in (dx, d_a, d_b, d_h):
            t.zero_()
        return
    h_arg = nonempty(h, lora_a)
    dot = _dot_dtype(x.dtype)
    if z is None:
        z = _intermediate(m, r_hat, x.dtype, device)
        _z(x, lora_a, h, index, z)
    d_z = _intermediate(m, r_hat, x.dtype, device)

    block_m, block_n, block_p, warps = _blocks("dz", x.dtype, r_hat)
    grid = (triton.cdiv(r_hat, block_p), triton.cdiv(m, block_m))
    _pera_dz_bwd_kernel[grid](
        grad, lora_b, index, d_z, m, n, r, r_hat, float(scale),
        grad.stride(0), lora_b.stride(0), d_z.stride(0),
        DOT=dot, INTERPRET=interpreting(), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip

    block_n, block_m, block_p, warps = _blocks("db", x.dtype, r_hat)
    chunks, n_tiles = triton.cdiv(r_hat, block_p), triton.cdiv(n, block_n)
    splits, per_split = _splits(chunks * n_tiles, m, block_m, device)
    part_b = _partials(chunks * splits, (n, r), d_b)
    _pera_db_bwd_kernel[(chunks, n_tiles, splits)](
        grad, z, lora_b, index, part_b, m, n, r, r_hat, float(scale), per_split,
        grad.stride(0), z.stride(0), lora_b.stride(0), part_b.stride(0), part_b.stride(1),
        DOT=dot, INTERPRET=interpreting(), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip
    _reduce(part_b, d_b)

    block_k, block_m, block_p, warps = _blocks("da", x.dtype, r_hat)
    chunks, k_tiles = triton.cdiv(r_hat, block_p), triton.cdiv(k, block_k)
    splits, per_split = _splits(chunks * k_tiles, m, block_m, device)
    part_a = _partials(chunks * splits, (r, k), d_a)
    part_h = _partials(k_tiles * splits, (d_h.shape[0],), d_h)
    _pera_da_bwd_kernel[(chunks, k_tiles, splits)](
        x, d_z, lora_a, h_arg, index, part_a, nonempty(part_h, lora_a), m, k, r, r_hat, per_split,
        x.stride(0), d_z.stride(0), lora_a.stride(0), part_a.stride(0), part_a.stride(1), part_h.stride(0),
        DOT=dot, INTERPRET=interpreting(), BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip
    _reduce(part_a, d_a)
    _reduce(part_h, d_h)

    block_m, block_k, block_p, warps = _blocks("dx", x.dtype, r_hat)
    grid = (triton.cdiv(k, block_k), triton.cdiv(m, block_m))
    _pera_dx_bwd_kernel[grid](
        d_z, lora_a, h_arg, index, dx, m, k, r, r_hat,
        d_z.stride(0), lora_a.stride(0), dx.stride(0),
        DOT=dot, INTERPRET=interpreting(), BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip


def delta_weight(
    lora_a: torch.Tensor, lora_b: torch.Tensor, h: torch.Tensor, scale: float, mode: str, out: torch.Tensor
) -> None:
    """out [N, K] = s·B̂·Â for lora_a [r, K], lora_b [N, r], h [|P|] of ``mode``, all of one float dtype; fp32
    accumulation. Inputs of any strides are taken; out has unit column stride."""
    lora_a, lora_b, h = rows_contiguous(lora_a), rows_contiguous(lora_b), h.contiguous()
    _check_out("out", out)
    n, k = out.shape
    r = lora_a.shape[0]
    index = _index(r, mode, lora_a.device)
    r_hat = index.shape[1]
    if n == 0 or k == 0:
        return
    block_n, block_k, block_p, warps = _blocks("delta", lora_a.dtype, r_hat)
    grid = (triton.cdiv(k, block_k), triton.cdiv(n, block_n))
    _pera_delta_fwd_kernel[grid](
        lora_a, lora_b, nonempty(h, lora_a), index, out, n, k, r, r_hat, float(scale),
        lora_a.stride(0), lora_b.stride(0), out.stride(0),
        DOT=_dot_dtype(lora_a.dtype), INTERPRET=interpreting(),
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip
