"""2:4 masks and the canonical compressed format (DESIGN §3.1, §3.2).

W is [N, K] (out, in), 2:4 along K; K must be a multiple of 16.

- ``values`` [N, K/2]: the kept values of each group of 4, in column order, W's dtype.
- ``meta`` [N, K/16] int16: group g of row n is the nibble at bits 4·(g mod 4) of ``meta[n, g // 4]``; low 2 bits
  the first kept index, high 2 bits the second (first < second). Groups with fewer than two non-zeros still
  name two indices and store explicit zeros. -0.0 counts as zero and is stored as +0.0.

Every function here checks its arguments, then runs a ``perfkern::*`` op on the backend ``perfkern`` selects.
float64 is taken everywhere but the CUTLASS layout, and runs on the reference backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perfkern.ops import sparse24 as _ops
from perfkern.ops._common import check_2d, check_float, check_k16, check_same_device, shape_str
from perfkern.reference import sparse24 as _ref

__all__ = [
    "mask_2to4",
    "double_mask_2to4",
    "compress_2to4",
    "decompress_2to4",
    "gather_2to4",
    "to_cutlass",
    "from_cutlass",
    "is_2to4",
    "pad_to_multiple",
]


def _check_dense(name: str, t: torch.Tensor) -> None:
    check_2d(name, t)
    check_float(name, t)
    check_k16(f"K ({name}.shape[1])", t.shape[1])


def _check_meta(values: torch.Tensor, meta: torch.Tensor, values_name: str = "values") -> None:
    check_2d(values_name, values, "[N, K/2]")
    check_float(values_name, values)
    check_k16(f"K (2 * {values_name}.shape[1])", 2 * values.shape[1])
    if meta.dtype != torch.int16:
        raise TypeError(f"meta must be int16, got {meta.dtype}")
    expected = (values.shape[0], values.shape[1] // 8)
    if tuple(meta.shape) != expected:
        raise ValueError(
            f"meta must be [N, K/16] = {shape_str(expected)} for {values_name} {shape_str(values.shape)}, "
            f"got {shape_str(meta.shape)}"
        )
    check_same_device(**{values_name: values, "meta": meta})


def mask_2to4(scores: torch.Tensor, pattern: str = "row") -> torch.Tensor:
    """The 2:4 mask of ``scores`` [N, K] (magnitudes, or any importance score such as Wanda's). Returns bool [N, K].

    - ``"row"``: True at the 2 entries of largest |score| in every group of 4 along K. Ties go to the lower
      index; NaN ranks above every number, so each group keeps exactly two entries. Runs on the selected backend.
    - ``"transposable"``: every 4x4 tile keeps two entries per row and per column (so the masked W and Wᵀ are
      both 2:4), choosing the pattern of largest total |score| exactly among all 90 candidates (ties to the
      first in lexicographic order). N must be a multiple of 4. Plain PyTorch on the scores' device.
    """
    _check_dense("scores", scores)
    if pattern == "row":
        return _ops.mask_2to4(scores)
    if pattern == "transposable":
        if scores.shape[0] % 4 != 0:
            raise ValueError(f"the transposable pattern needs N (scores.shape[0]) % 4 == 0, got {scores.shape[0]}")
        return _ref.transposable_mask_2to4(scores)
    raise ValueError(f"pattern must be 'row' or 'transposable', got {pattern!r}")


def double_mask_2to4(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SLoPe's double pruning of ``scores`` [N, K]: ``(mask, bwd_mask)``, bool [N, K] each.

    ``mask`` is the row mask (2:4 along K) used by the forward; ``bwd_mask`` prunes the kept entries again,
    2:4 along N by |score|, so the backward copy ``(W ⊙ bwd_mask)ᵀ`` [K, N] is 2:4 along its rows. It keeps
    about 41% of W (vs 50%). N must be a multiple of 16.

    ``SparseLoRALinear`` built with ``mask=scores`` takes ``mask`` from the scores but chooses its backward copy by
    |Ws| (it re-chooses it during training, where only the weight exists): its backward mask is
    ``double_mask_2to4(Ws)[1]`` for the pruned weight Ws, which differs from ``double_mask_2to4(scores)[1]`` where
    the scores do not rank like |W|."""
    _check_dense("scores", scores)
    check_k16("N (scores.shape[0]) for the double mask", scores.shape[0])
    mask = _ops.mask_2to4(scores)
    kept = torch.where(mask, scores.float().abs(), torch.zeros((), device=scores.device))
    return mask, mask & _ops.mask_2to4(kept.t().contiguous()).t()


def is_2to4(w: torch.Tensor) -> bool:
    """Whether every group of 4 along K of ``w`` [N, K] holds at most 2 non-zeros (NaN counts as non-zero).

    One reduction over ``w`` and a host sync."""
    check_2d("w", w)
    if w.shape[1] % 4 != 0:
        return False
    return bool(((w != 0).view(w.shape[0], w.shape[1] // 4, 4).sum(-1) <= 2).all())


def compress_2to4(w: torch.Tensor, *, strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress ``w`` [N, K] to the canonical 2:4 format: ``(values [N, K/2], meta [N, K/16] int16)``.

    With ``strict=True`` (the default) ``w`` must already be 2:4 (at most 2 non-zeros per group of 4) and a
    ValueError says where it is not; this costs one reduction and a host sync. With ``strict=False`` the 2
    entries of largest magnitude of each group are kept: magnitude pruning and compression in one pass.
    Differentiable in ``w``: the gradient flows to the kept entries.
    """
    _check_dense("w", w)
    if strict:
        counts = (w != 0).view(w.shape[0], w.shape[1] // 4, 4).sum(-1)
        bad = (counts > 2).nonzero()
        if bad.numel():
            row, group = (int(i) for i in bad[0])
            raise ValueError(
                f"w is not 2:4 sparse: row {row}, columns {4 * group}..{4 * group + 3} hold {int(counts[row, group])} "
                f"non-zeros ({bad.shape[0]} such groups); prune it first (w * mask_2to4(w)) or pass strict=False to "
                "keep the 2 largest magnitudes of each group"
            )
    return _ops.compress_2to4(w)


def decompress_2to4(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense [N, K] matrix of a canonical 2:4 pair ``values`` [N, K/2], ``meta`` [N, K/16] int16.

    Differentiable in ``values``."""
    _check_meta(values, meta)
    return _ops.decompress_2to4(values, meta)


def gather_2to4(dense: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """values [N, K/2]: the entries of ``dense`` [N, K] at the positions ``meta`` [N, K/16] names.

    Compresses a matrix with a given pattern (for example a gradient onto the weight's mask); the adjoint of
    ``decompress_2to4``. Differentiable in ``dense``."""
    _check_dense("dense", dense)
    expected = (dense.shape[0], dense.shape[1] // 16)
    if meta.dtype != torch.int16:
        raise TypeError(f"meta must be int16, got {meta.dtype}")
    if tuple(meta.shape) != expected:
        raise ValueError(
            f"meta must be [N, K/16] = {shape_str(expected)} for dense {shape_str(dense.shape)}, "
            f"got {shape_str(meta.shape)}"
        )
    check_same_device(dense=dense, meta=meta)
    return _ops.gather_2to4(dense, meta)


def _check_cutlass(values: torch.Tensor, meta: torch.Tensor, values_name: str) -> None:
    _check_meta(values, meta, values_name)
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"torch's semi-structured CUTLASS layout here is for float16/bfloat16, got {values.dtype}")
    n, k = values.shape[0], 2 * values.shape[1]
    if n % 32 != 0 or k % 64 != 0:
        raise ValueError(f"the CUTLASS layout needs N % 32 == 0 and K % 64 == 0, got N={n}, K={k}")


def to_cutlass(values: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical 2:4 pair → (values, meta) in the layout of torch's semi-structured CUTLASS backend: exactly what
    ``torch.sparse.to_sparse_semi_structured`` (``sparse_semi_structured_from_dense_cutlass``) stores as
    ``packed`` / ``meta`` for the matrix ``decompress_2to4(values, meta)``, bit for bit, zeros compared by value.

    Both layouts keep the values in column order; the metadata words are reordered. Groups with fewer than two
    non-zeros name other positions in torch's layout than in the canonical one (torch keeps positions (2, 3) for
    an all-zero group and (0, 2), (1, 2), (2, 3), (2, 3) for a lone non-zero at 0, 1, 2, 3; the canonical rule
    keeps the lowest indices), so those groups are re-encoded first; their zeros are +0.0 (torch copies the
    dense matrix's, which may be -0.0). float16/bfloat16, N % 32 == 0, K % 64 == 0."""
    _check_cutlass(values, meta, "values")
    values, meta = _ref.repick_2to4(values, meta, _ref.TORCH_CUTLASS_PAIRS)
    return values, _ops.meta_to_cutlass(meta)


def from_cutlass(values_c: torch.Tensor, meta_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta) in torch's semi-structured CUTLASS layout → the canonical 2:4 pair of the same matrix
    (what ``compress_2to4`` gives for it: under-full groups re-encoded to the canonical positions, zeros +0.0)."""
    _check_cutlass(values_c, meta_c, "values_c")
    return _ref.repick_2to4(values_c, _ops.meta_from_cutlass(meta_c), _ref.CANONICAL_PAIRS)


def pad_to_multiple(w: torch.Tensor, multiple: int = 16, dim: int = -1) -> torch.Tensor:
    """``w`` with zeros appended along ``dim`` up to a multiple of ``multiple`` (K must be a multiple of 16)."""
    size = w.shape[dim]
    extra = -size % multiple
    if extra == 0:
        return w
    pad = [0, 0] * (w.dim() - 1 - (dim % w.dim())) + [0, extra]
    return F.pad(w, pad)
