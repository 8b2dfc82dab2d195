"""compressed-tensors' ``sparse-24-bitmask`` format, to and from the canonical 2:4 format (DESIGN §3.1).

llm-compressor wrote the public 2:4 checkpoints of recent years in this format. Per targeted linear layer with a
weight W [N, K]:

- ``<prefix>.compressed`` [N, K/2], W's dtype: the values at the set bits, row by row in ascending column order
  (compressed-tensors fills the set bits of the flattened matrix in order with the flattened values);
- ``<prefix>.bitmask`` uint8 [N, ceil(K/8)]: ``numpy.packbits(mask, axis=-1, bitorder="little")``, so bit j of byte
  b is column 8b + j;
- ``<prefix>.shape`` int64 [[N], [K]].

compressed-tensors keeps the two largest magnitudes of each group by ``topk``, so a group with fewer than two
non-zeros names zero-valued positions of its own choosing, and a kept value may be -0.0. Reading keeps the values
exactly and gives the canonical metadata of the dense matrix (``compress_2to4``: zeros to the lowest free
indices, -0.0 stored as +0.0), whatever positions the bitmask named for zeros.
"""

from __future__ import annotations

import torch

from perfkern import sparsity
from perfkern.ops._common import shape_str

__all__ = ["from_bitmask", "to_bitmask"]


def _bits(bitmask: torch.Tensor, k: int) -> torch.Tensor:
    """bool [N, K] from the little-endian packed bitmask [N, ceil(K/8)]."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmask.device)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().view(bitmask.shape[0], -1)[:, :k]


def from_bitmask(
    compressed: torch.Tensor, bitmask: torch.Tensor, shape: torch.Tensor | tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [N, K/2], meta [N, K/16] int16)`` of the weight a ``sparse-24-bitmask`` triple stores.

    ``shape`` is the stored int64 [[N], [K]] (or (N, K)). Raises ValueError where the triple is not a 2:4 matrix
    the kernels can take (K % 16, a group with more than two set bits, a value count that is not the bit count)."""
    n, k = (int(v) for v in (shape.flatten().tolist() if isinstance(shape, torch.Tensor) else shape))
    if k % 16 != 0:
        raise ValueError(f"K must be a multiple of 16 for the 2:4 kernels, got shape [{n}, {k}]")
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (n, (k + 7) // 8):
        expected = f"uint8 [N, ceil(K/8)] = [{n}, {(k + 7) // 8}]"
        raise ValueError(f"bitmask must be {expected}, got {bitmask.dtype} {shape_str(bitmask.shape)}")
    if not compressed.dtype.is_floating_point:
        raise TypeError(f"compressed must be a floating-point tensor, got {compressed.dtype}")
    bits = _bits(bitmask, k)
    per_group = bits.view(n, k // 4, 4).sum(-1)
    over = (per_group > 2).nonzero()
    if over.numel():
        row, group = (int(i) for i in over[0])
        raise ValueError(
            f"not 2:4: row {row}, columns {4 * group}..{4 * group + 3} have {int(per_group[row, group])} set bits"
        )
    count = int(bits.sum())
    if count != compressed.numel():
        raise ValueError(f"the bitmask sets {count} bits but compressed holds {compressed.numel()} values")
    dense = torch.zeros(n, k, dtype=compressed.dtype, device=compressed.device)
    dense[bits] = compressed.reshape(-1)
    return sparsity.compress_2to4(dense)


def to_bitmask(values: torch.Tensor, meta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``sparse-24-bitmask`` triple of a canonical pair: ``{"compressed", "bitmask", "shape"}`` (the bits at
    the two positions each group's metadata names, so ``compressed`` is ``values``)."""
    dense_positions = sparsity.decompress_2to4(torch.ones_like(values), meta) != 0  # [N, K]
    n, k = dense_positions.shape
    padded = torch.nn.functional.pad(dense_positions, (0, -k % 8)).view(n, -1, 8).to(torch.uint8)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=values.device)
    bitmask = (padded * weights).sum(-1, dtype=torch.uint8)
    return {
        "compressed": values.detach().contiguous(),
        "bitmask": bitmask,
        "shape": torch.tensor([[n], [k]], dtype=torch.int64),
    }
