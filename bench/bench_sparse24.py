"""2:4 format: compress (prune + pack) and decompress, against torch's semi-structured conversion.

Baselines: on a GPU ``torch.sparse.to_sparse_semi_structured`` (CUTLASS layout) and its ``to_dense``; on the
CPU torch's pure-PyTorch CUTLASS converters (what torch itself runs there).
"""

import pytest
import torch
from shapes import shape_id, weight_shapes
from torch.sparse import _semi_structured_conversions as torch_conv

import perfkern
from perfkern import sparsity
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROVIDERS = [
    b
    for b in perfkern.available_backends(DEVICE)
    if ops.COMPRESS.has(b) and ops.DECOMPRESS.has(b) and not (DEVICE == "cpu" and b == "triton")
]


def _pruned(shape):
    w = torch.randn(*shape, device=DEVICE, dtype=DTYPE)
    return w * ref.mask_2to4(w)


def _torch_baseline():
    """(compress name, compress fn, decompress name, decompress fn) of what torch offers on this device."""
    if DEVICE == "cuda":
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        SparseSemiStructuredTensor._FORCE_CUTLASS = True
        return (
            "torch.sparse.to_sparse_semi_structured (CUTLASS)", to_sparse_semi_structured,
            "torch SparseSemiStructuredTensor.to_dense", lambda s: s.to_dense(),
        )  # fmt: skip
    return (
        "torch sparse_semi_structured_from_dense_cutlass (CPU)", torch_conv.sparse_semi_structured_from_dense_cutlass,
        "torch sparse_semi_structured_to_dense_cutlass (CPU)",
        lambda s: torch_conv.sparse_semi_structured_to_dense_cutlass(*s),
    )  # fmt: skip


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", weight_shapes(), ids=shape_id)
def test_compress(record, shape, provider):
    w = _pruned(shape)
    name, torch_compress, _, _ = _torch_baseline()
    with perfkern.use_backend(provider):
        values, meta = sparsity.compress_2to4(w, strict=False)
        assert torch.equal(sparsity.decompress_2to4(values, meta), w)
        n, k = shape
        moved = n * k * w.element_size() + values.numel() * values.element_size() + meta.numel() * 2
        record("compress_2to4", shape_id(shape), provider, lambda: sparsity.compress_2to4(w, strict=False),
               name, lambda: torch_compress(w), moved)  # fmt: skip


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", weight_shapes(), ids=shape_id)
def test_decompress(record, shape, provider):
    w = _pruned(shape)
    _, torch_compress, name, torch_decompress = _torch_baseline()
    theirs = torch_compress(w)
    with perfkern.use_backend(provider):
        values, meta = sparsity.compress_2to4(w, strict=False)
        assert torch.equal(sparsity.decompress_2to4(values, meta), w)
        assert torch.equal(torch_decompress(theirs), w)
        n, k = shape
        moved = n * k * w.element_size() + values.numel() * values.element_size() + meta.numel() * 2
        record("decompress_2to4", shape_id(shape), provider, lambda: sparsity.decompress_2to4(values, meta),
               name, lambda: torch_decompress(theirs), moved)  # fmt: skip
