"""The 2:4 format in plain PyTorch: the truth every backend is compared with (DESIGN §3.1, §3.2).

W is [N, K], 2:4 along K. Each group of 4 consecutive columns keeps the 2 entries of largest magnitude; ties go
to the lower index and NaN ranks above every number, so exactly two entries are kept and every backend agrees
bit for bit.

- ``values`` [N, K/2]: the kept entries of each group in column order, -0.0 stored as +0.0.
- ``meta`` [N, K/16] int16: group g is the nibble at bits 4·(g mod 4) of ``meta[n, g // 4]``; its low 2 bits are
  the first kept index, its high 2 bits the second, first < second.
"""

from __future__ import annotations

import torch


def _kept(scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per group of 4, whether entry j is kept: fewer than two entries outrank it (a larger one, or an equal one
    at a lower index). NaN counts as +inf, so the ranks are a permutation and exactly two entries are kept."""
    n, k = scores.shape
    m = scores.float().abs()
    m.masked_fill_(m.isnan(), float("inf"))
    # One contiguous plane per position in the group: the comparisons below then stream through memory.
    m0, m1, m2, m3 = m.view(n, k // 4, 4).permute(2, 0, 1).contiguous()
    ge01, ge02, ge03, ge12, ge13, ge23 = m0 >= m1, m0 >= m2, m0 >= m3, m1 >= m2, m1 >= m3, m2 >= m3
    rank0 = (~ge01).byte() + (~ge02).byte() + (~ge03).byte()
    rank1 = ge01.byte() + (~ge12).byte() + (~ge13).byte()
    rank2 = ge02.byte() + ge12.byte() + (~ge23).byte()
    rank3 = ge03.byte() + ge13.byte() + ge23.byte()
    return rank0 < 2, rank1 < 2, rank2 < 2, rank3 < 2


def mask_2to4(scores: torch.Tensor) -> torch.Tensor:
    """bool [N, K]: True at the 2 entries of largest |score| in each group of 4 along K."""
    return torch.stack(_kept(scores), dim=-1).view(scores.shape)


def _pack(idx0: torch.Tensor, idx1: torch.Tensor) -> torch.Tensor:
    n, groups = idx0.shape
    nibbles = (idx0 | (idx1 << 2)).view(n, groups // 4, 4)
    shifts = torch.tensor([0, 4, 8, 12], dtype=torch.int32, device=idx0.device)
    # Four nibbles fill all 16 bits; the int32 sum wraps into int16 as two's complement.
    return (nibbles << shifts).sum(-1, dtype=torch.int32).to(torch.int16)


def _unpack(meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, words = meta.shape
    shifts = torch.tensor([0, 4, 8, 12], dtype=torch.int32, device=meta.device)
    nibbles = ((meta.int() & 0xFFFF).unsqueeze(-1) >> shifts) & 0xF
    nibbles = nibbles.view(n, words * 4)
    return nibbles & 3, (nibbles >> 2) & 3


def _planes(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four positions of every group of 4 along K, as [N, K/4] views."""
    return t.view(t.shape[0], t.shape[1] // 4, 4).unbind(-1)


def _at(p, idx0: torch.Tensor, idx1: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Position p of each group given its two kept entries: v1 if p is the second index, else v0 if p is the first
    index, else +0.0 (so malformed metadata decodes deterministically: the second index wins)."""
    return torch.where(idx1 == p, v1, torch.where(idx0 == p, v0, torch.zeros((), dtype=v0.dtype, device=v0.device)))


# Values move by selection (torch.where), never through gather/scatter or a float conversion: those rewrite NaN
# payloads on some devices and dtypes (bf16 0x7FC0 became 0xFFFF through torch.gather on the CPU), and the
# format ops are data movement, bit-exact on every backend for every value.


def compress_2to4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, K/2], meta [N, K/16] int16) keeping the 2 largest |w| of each group of 4."""
    n, k = w.shape
    keep0, keep1, keep2, keep3 = _kept(w)
    w0, w1, w2, w3 = _planes(w)
    ones, twos = torch.ones_like(keep0, dtype=torch.int32), torch.full_like(keep0, 2, dtype=torch.int32)
    idx0 = torch.where(keep0, 0, torch.where(keep1, ones, twos))
    idx1 = torch.where(keep3, 3, torch.where(keep2, twos, ones))
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    v0 = torch.where(keep0, w0, torch.where(keep1, w1, w2))
    v1 = torch.where(keep3, w3, torch.where(keep2, w2, w1))
    values = torch.stack((torch.where(v0 == 0, zero, v0), torch.where(v1 == 0, zero, v1)), -1)
    return values.view(n, k // 2), _pack(idx0, idx1)


def decompress_2to4(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense [N, K] from the canonical format. Position p of a group holds the second value if p is the second
    index, else the first value if p is the first index, else +0.0."""
    n, half = values.shape
    idx0, idx1 = _unpack(meta)
    v0, v1 = values.view(n, half // 2, 2).unbind(-1)
    return torch.stack([_at(p, idx0, idx1, v0, v1) for p in range(4)], -1).view(n, 2 * half)


def gather_2to4(dense: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """values [N, K/2]: the entries of ``dense`` at the positions ``meta`` names (the adjoint of decompress)."""
    n, k = dense.shape
    idx0, idx1 = _unpack(meta)
    d0, d1, d2, d3 = _planes(dense)

    def pick(idx: torch.Tensor) -> torch.Tensor:
        return torch.where(idx == 0, d0, torch.where(idx == 1, d1, torch.where(idx == 2, d2, d3)))

    return torch.stack((pick(idx0), pick(idx1)), -1).view(n, k // 2)


# Which two positions a group names, by the set of its non-zero positions (a 4-bit mask). Two non-zeros: those two,
# in order, under every rule. Fewer: the canonical rule (ties to the lower index) and torch's CUTLASS converter
# (``sparse_semi_structured_from_dense_cutlass``, whose choices come from a minimised Boolean formula) differ.
CANONICAL_PAIRS = {0b0000: (0, 1), 0b0001: (0, 1), 0b0010: (0, 1), 0b0100: (0, 2), 0b1000: (0, 3)}
TORCH_CUTLASS_PAIRS = {0b0000: (2, 3), 0b0001: (0, 2), 0b0010: (1, 2), 0b0100: (2, 3), 0b1000: (2, 3)}


def _pair_nibbles(under_full: dict[int, tuple[int, int]], device: torch.device) -> torch.Tensor:
    """int32 [16]: the metadata nibble for each set of non-zero positions (sets of three or four never occur)."""
    table = [0b0100] * 16
    for i in range(4):
        for j in range(i + 1, 4):
            table[(1 << i) | (1 << j)] = i | (j << 2)
    for occupied, (i, j) in under_full.items():
        table[occupied] = i | (j << 2)
    return torch.tensor(table, dtype=torch.int32, device=device)


def repick_2to4(
    values: torch.Tensor, meta: torch.Tensor, under_full: dict[int, tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2:4 pair (values, meta) re-encoded so that each group names the positions ``under_full`` gives for its
    set of non-zero positions, zeros stored as +0.0. The matrix it decodes to is unchanged: the groups are read
    as ``decompress_2to4`` reads them (malformed metadata included, the second index winning), so the result
    is the rule's encoding of ``decompress_2to4(values, meta)``. Element-wise tensor ops, on any device."""
    n, half = values.shape
    idx0, idx1 = _unpack(meta)
    v0, v1 = values.view(n, half // 2, 2).unbind(-1)
    none = torch.zeros_like(idx0)
    occupied = torch.where(v1 != 0, 1 << idx1, none) | torch.where((v0 != 0) & (idx0 != idx1), 1 << idx0, none)
    nibble = _pair_nibbles(under_full, values.device)[occupied.long()]
    new0, new1 = nibble & 3, nibble >> 2
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    picked = [_at(p, idx0, idx1, v0, v1) for p in (new0, new1)]
    picked = [torch.where(v == 0, zero, v) for v in picked]
    return torch.stack(picked, -1).view(n, half), _pack(new0, new1)


def cutlass_meta_offsets(rows: int, meta_cols: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat position in torch's semi-structured CUTLASS metadata of each canonical meta element [rows, meta_cols].

    CUTLASS's sm80 sparse GEMM reads metadata as ColumnMajorInterleaved<2>, with the rows of each 32-row group
    interleaved by 8 and the off-diagonal entries of every 2x2 block swapped.
    """
    r = torch.arange(rows, device=device).unsqueeze(1).expand(rows, meta_cols)
    c = torch.arange(meta_cols, device=device).unsqueeze(0).expand(rows, meta_cols)
    dst_row = (r // 32) * 32 + (r % 8) * 4 + (r % 32) // 8
    swap = ((dst_row % 2 == 0) & (c % 2 == 1)).long() - ((dst_row % 2 == 1) & (c % 2 == 0)).long()
    dst_row = dst_row + swap
    dst_col = c - swap
    return ((dst_col // 2) * rows * 2 + dst_row * 2 + dst_col % 2).reshape(-1)


def meta_to_cutlass(meta: torch.Tensor) -> torch.Tensor:
    """Canonical meta [N, K/16] → torch's CUTLASS layout (same shape and dtype)."""
    rows, cols = meta.shape
    out = torch.empty_like(meta).view(-1)
    out[cutlass_meta_offsets(rows, cols, meta.device)] = meta.reshape(-1)
    return out.view(rows, cols)


def meta_from_cutlass(meta_c: torch.Tensor) -> torch.Tensor:
    """torch's CUTLASS layout [N, K/16] → canonical meta."""
    rows, cols = meta_c.shape
    return meta_c.reshape(-1)[cutlass_meta_offsets(rows, cols, meta_c.device)].view(rows, cols)


def _transposable_patterns(device: torch.device | str) -> torch.Tensor:
    """All 90 4x4 0/1 tiles with exactly two ones in every row and every column, as float [16, 90]."""
    import itertools

    rows = [r for r in itertools.product((0, 1), repeat=4) if sum(r) == 2]
    tiles = [t for t in itertools.product(rows, repeat=4) if all(sum(col) == 2 for col in zip(*t, strict=True))]
    return torch.tensor(tiles, dtype=torch.float32, device=device).view(len(tiles), 16).t().contiguous()


def transposable_mask_2to4(scores: torch.Tensor) -> torch.Tensor:
    """bool [N, K]: in every 4x4 tile, the pattern with two entries per row and per column (so both W and Wᵀ are
    2:4) that keeps the largest total |score|. Exact: every tile scores all 90 such patterns (one small matmul)
    and keeps the best; ties go to the first pattern in lexicographic order. N and K multiples of 4."""
    n, k = scores.shape
    m = scores.float().abs()
    # Finite stand-ins for NaN/inf keep the pattern sums comparable (inf - inf would be NaN).
    big = torch.finfo(torch.float32).max / 64
    m = torch.where(torch.isnan(m) | (m > big), torch.full_like(m, big), m)
    tiles = m.view(n // 4, 4, k // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16)
    patterns = _transposable_patterns(scores.device)
    best = (tiles.double() @ patterns.double()).argmax(dim=1)
    chosen = patterns.t()[best].bool()
    return chosen.view(n // 4, k // 4, 4, 4).permute(0, 2, 1, 3).reshape(n, k)


def double_mask_2to4(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SLoPe's double pruning: (mask, bwd_mask), both bool [N, K]. ``mask`` is 2:4 along K (the forward);
    ``bwd_mask`` is ``mask`` pruned again 2:4 along N by the magnitude of the kept scores, so the backward copy
    (W ⊙ bwd_mask)ᵀ [K, N] is 2:4 along N."""
    mask = mask_2to4(scores)
    kept = torch.where(mask, scores.float().abs(), torch.zeros((), device=scores.device))
    return mask, mask & mask_2to4(kept.t().contiguous()).t()


def sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """y = x·Wsᵀ + b + s·(x·Aᵀ)·Bᵀ in fp32 (fp64 for fp64 inputs), cast to x's dtype.
    x [..., K], Ws [N, K], A [r, K], B [N, r]."""
    acc = acc_dtype(x)
    xf = x.to(acc)
    y = xf @ decompress_2to4(values, meta).to(acc).t()
    if bias is not None:
        y = y + bias.to(acc)
    if lora_a is not None:
        y = y + scale * (xf @ lora_a.to(acc).t()) @ lora_b.to(acc).t()
    return y.to(x.dtype)


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 accumulation, fp64 for fp64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sparse24_linear_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    scale: float = 1.0,
    bwd_values: torch.Tensor | None = None,
    bwd_meta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dvalues, dbias, dA, dB) of ``sparse24_linear`` in fp32 (DESIGN §3.3).

    dx = dy·Wbwd + s·(dy·B)·A with Wbwd = Ws, or the double-pruned copy when ``bwd_meta`` is given
    (``bwd_values``/``bwd_meta`` = compress_2to4(Wbwdᵀ), [K, N] 2:4 along N; without ``bwd_values`` the copy is
    Wsᵀ gathered onto ``bwd_meta``); dvalues = gather(dyᵀ·x, meta) (only the kept
    entries); db = Σ dy; dA = s·(dy·B)ᵀ·x; dB = s·dyᵀ·(x·Aᵀ)."""
    acc = acc_dtype(x)
    k = x.shape[-1]
    dy = grad.reshape(-1, grad.shape[-1]).to(acc)
    xf = x.reshape(-1, k).to(acc)
    if bwd_meta is not None:
        if bwd_values is None:
            bwd_values = gather_2to4(decompress_2to4(values, meta).t().contiguous(), bwd_meta)
        w_bwd = decompress_2to4(bwd_values, bwd_meta).to(acc).t()
    else:
        w_bwd = decompress_2to4(values, meta).to(acc)
    dx = dy @ w_bwd
    d_a = d_b = None
    if lora_a is not None:
        dy_b = dy @ lora_b.to(acc)
        dx = dx + scale * dy_b @ lora_a.to(acc)
        d_a = (scale * dy_b.t() @ xf).to(lora_a.dtype)
        d_b = (scale * dy.t() @ (xf @ lora_a.to(acc).t())).to(lora_b.dtype)
    d_values = gather_2to4(dy.t() @ xf, meta).to(values.dtype)
    return dx.to(x.dtype).reshape(x.shape), d_values, dy.sum(0).to(x.dtype), d_a, d_b
