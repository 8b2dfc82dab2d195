"""SparseGPT 2:4 pruning with the OBS weight update (Frantar & Alistarh 2023), from layer-wise Hessians."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from perfkern import convert as _layers
from perfkern.calibration._common import (
    DEFAULT_EXCLUDE,
    Batch,
    Patterns,
    _linear_layers,
    _observe_inputs,
    _out_in,
    _warn_unreached,
)
from perfkern.ops._common import shape_str


def collect_hessians(
    model: nn.Module,
    batches: Iterable[Batch],
    include: Patterns | None = None,
    exclude: Patterns = DEFAULT_EXCLUDE,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The layer-wise Hessians of the reconstruction loss ‖XWᵀ − XŴᵀ‖²: ``H = 2·XᵀX / n`` [in, in] fp32, with X
    [n, in] every input row the layer saw over all ``batches`` (hooks as in ``wanda_scores``; eval mode,
    ``torch.no_grad``, everything restored afterwards).

    Holds one [in, in] matrix per selected layer: narrow ``include`` to bound the memory. The inputs are those of
    the unpruned model. Returns qualified name → H for every selected layer some batch reached."""
    layers = _linear_layers(model, include, exclude)
    gram: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def record(name: str, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        product = flat.t() @ flat
        gram[name] = product if name not in gram else gram[name] + product
        rows[name] = rows.get(name, 0) + flat.shape[0]

    _observe_inputs(model, batches, layers, record, progress, "hessians")
    _warn_unreached([name for name, _ in layers if name not in gram], "Hessian")
    return {name: gram[name] * (2.0 / max(rows[name], 1)) for name, _ in layers if name in gram}


def sparsegpt_prune_2to4(
    weight: torch.Tensor, hessian: torch.Tensor, blocksize: int = 128, percdamp: float = 0.01
) -> torch.Tensor:
    """SparseGPT's 2:4 pruning with weight update (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models
    Can Be Accurately Pruned in One-Shot"). ``weight`` [out, in], ``hessian`` H [in, in] (``collect_hessians``);
    returns Ŵ [out, in] in ``weight``'s dtype, 2:4 along in, computed in fp32.

    Minimises ‖XWᵀ − XŴᵀ‖² column by column with Optimal Brain Surgeon updates. Columns j with H_jj = 0 (never
    active) get H_jj = 1 and W[:, j] = 0; then H += λ·I with λ = ``percdamp``·mean(diag H), and U is the upper
    Cholesky factor of H⁻¹ (H⁻¹ = UᵀU). U's row i, from column i on, is the inverse Hessian of the columns not yet
    processed, so for column i of every row:

    - at i ≡ 0 (mod 4), of columns i..i+3 (as already updated) prune the 2 of least saliency w_j² / U_jj²;
    - q = w_i, or 0 where pruned; e = (w_i − q) / U_ii; W[:, i:] −= e ⊗ U[i, i:] (then column i is exactly q).

    Updates to columns beyond the current block of ``blocksize`` columns (a multiple of 4) are applied once per
    block, which is the same arithmetic batched."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {shape_str(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    out_features, in_features = weight.shape
    if in_features % 4 != 0:
        raise ValueError(f"in (weight.shape[1]) must be a multiple of 4 for 2:4, got {in_features}")
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"hessian must be [in, in] = {shape_str((in_features, in_features))} for weight "
            f"{shape_str(weight.shape)}, got {shape_str(hessian.shape)}"
        )
    if not isinstance(blocksize, int) or blocksize <= 0 or blocksize % 4 != 0:
        raise ValueError(f"blocksize must be a positive multiple of 4, got {blocksize!r}")
    if not percdamp >= 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    w = weight.detach().float().clone()
    h = hessian.detach().to(device=w.device, dtype=torch.float32).clone()
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(percdamp * h.diagonal().mean())
    chol, info = torch.linalg.cholesky_ex(h)
    if info.item() != 0:
        raise ValueError(
            f"hessian + damping is not positive definite (Cholesky failed at column {info.item() - 1}); "
            f"raise percdamp (now {percdamp})"
        )
    u = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    for start in range(0, in_features, blocksize):
        end = min(start + blocksize, in_features)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        errors = torch.zeros_like(block)
        prune = torch.zeros(out_features, 4, dtype=torch.bool, device=w.device)
        for i in range(end - start):
            if i % 4 == 0:
                saliency = block[:, i : i + 4].square() / u_block.diagonal()[i : i + 4].square()
                least = saliency.argsort(dim=1, stable=True)[:, :2]
                prune = torch.zeros_like(prune).scatter_(1, least, True)
            column = block[:, i]
            q = column.masked_fill(prune[:, i % 4], 0.0)
            err = (column - q) / u_block[i, i]
            block[:, i:] -= err[:, None] * u_block[i, i:][None, :]
            block[:, i] = q
            errors[:, i] = err
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    return w.to(weight.dtype)


@torch.no_grad()
def apply_sparsegpt_2to4(
    model: nn.Module, hessians: Mapping[str, torch.Tensor], blocksize: int = 128, percdamp: float = 0.01
) -> list[str]:
    """Prune, in place, the weight of every layer named in ``hessians`` (``collect_hessians``) with
    ``sparsegpt_prune_2to4``; ``Conv1D`` weights are written back [in, out]. The layers stay dense modules whose
    weights are 2:4; ``sparsify(model)`` then keeps exactly those entries (and the updated values). Returns the
    pruned names."""
    done = []
    for name, hessian in hessians.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"hessians names {name!r}, which is not a submodule of the model") from None
        found = _layers._dense_weight(module)
        if found is None:
            raise TypeError(f"hessians names {name!r}, a {type(module).__name__}, not an nn.Linear or Conv1D")
        pruned = sparsegpt_prune_2to4(found[0], hessian, blocksize, percdamp)
        module.weight.copy_(_out_in(module, pruned))
        done.append(name)
    return done
