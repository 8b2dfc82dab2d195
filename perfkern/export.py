"""Adapters out as one plain LoRA (DESIGN §7): ``export_lora`` writes a standard PEFT adapter that every LoRA server
takes, for the dense base that ``perfkern.merge(model, adapters=False)`` gives.

A LoRA adapter goes out as it is. A PERA adapter is exactly a LoRA of rank r + |P| with factors Â = [A ; h_p·(a_i ⊙
a_j)] and B̂ = [B , b_i ⊙ b_j] (DESIGN §3.4), so it goes out as that LoRA. Either way ``lora_alpha`` is set so that
PEFT's scale alpha / rank equals the layer's s = alpha / r. The exact rank of PERA grows quadratically (full mode:
r + r(r+1)/2, 152 at r = 16, 2144 at r = 64), past the rank limits LoRA servers set (vLLM's ``--max-lora-rank``,
for one); ``max_rank=k`` exports, for every layer whose rank exceeds k, the best rank-k approximation of its ΔW
(truncated SVD, Eckart-Young) and reports its relative error.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from perfkern.nn import PeraLinear, SparseLoRALinear
from perfkern.reference.pera import expand

__all__ = ["export_lora", "ExportedLayer"]

PREFIX = "base_model.model."


@dataclass(frozen=True)
class ExportedLayer:
    """One layer of an exported adapter: its PEFT rank, PEFT alpha, and the relative Frobenius error of its ΔW
    (0 where exact; ``max_rank`` truncations only)."""

    name: str
    rank: int
    alpha: float
    relative_error: float


def _factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [R, K], B [N, R]) in fp32 (fp64 for fp64 layers) with ΔW = s·B·A."""
    if layer.adapter == "pera":
        return expand(layer.lora_a.detach(), layer.lora_b.detach(), layer.lora_h.detach(), layer.pera_mode)
    acc = torch.float64 if layer.lora_a.dtype == torch.float64 else torch.float32
    return layer.lora_a.detach().to(acc), layer.lora_b.detach().to(acc)


def _truncate(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-k factors of B·A (SVD of the product, split as U·√S and √S·Vᵀ) and the relative error."""
    delta = b @ a
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:k].sqrt()
    total = s.square().sum()
    error = float((s[k:].square().sum() / total).sqrt()) if total > 0 else 0.0
    return root.unsqueeze(1) * vh[:k], u[:, :k] * root, error


def export_lora(
    model: nn.Module,
    directory: str | os.PathLike,
    max_rank: int | None = None,
    dtype: torch.dtype | None = None,
    base_model_name_or_path: str | None = None,
) -> list[ExportedLayer]:
    """Write every active adapter of ``model``'s ``SparseLoRALinear`` and ``PeraLinear`` layers as one PEFT LoRA
    adapter in ``directory`` (``adapter_config.json`` + ``adapter_model.safetensors``).

    ``PeftModel.from_pretrained(perfkern.merge(model, adapters=False), directory)`` then computes what ``model``
    computes. Layers whose adapter is off (lazy, not switched on yet) add nothing and are left out. Hugging Face
    ``Conv1D`` layers (GPT-2) are targeted with ``fan_in_fan_out=True`` (A and B keep PEFT's [r, in] / [out, r]
    shapes); a model mixing them with ``nn.Linear`` targets cannot be one PEFT adapter and raises. ``max_rank``: see
    the module docstring. ``dtype``: of the saved factors (default float32, the precision they are computed in).
    Returns each exported layer with its rank, alpha and relative error."""
    from safetensors.torch import save_file

    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank must be >= 1 or None, got {max_rank}")
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, SparseLoRALinear | PeraLinear) and m.adapter is not None and m.adapter_active
    ]
    if not layers:
        raise ValueError("the model has no active adapter to export (SparseLoRALinear/PeraLinear with enable_adapter)")
    origins = {"Conv1D" if getattr(m, "dense_origin", nn.Linear).__name__ == "Conv1D" else "Linear" for _, m in layers}
    if len(origins) > 1:
        raise ValueError("one PEFT adapter has one fan_in_fan_out: the model mixes Conv1D and nn.Linear targets")
    tensors: dict[str, torch.Tensor] = {}
    exported = []
    for name, layer in layers:
        a, b = _factors(layer)
        error = 0.0
        if max_rank is not None and a.shape[0] > max_rank:
            a, b, error = _truncate(a, b, max_rank)
        rank = a.shape[0]
        # PEFT scales by alpha / rank: with alpha = s·rank its scale is the layer's s.
        alpha = layer.scale * rank
        # merge(model, adapters=False) puts the dense base (a PeraLinear's own base) where the layer was.
        out = torch.float32 if dtype is None else dtype
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.to(out).contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.to(out).contiguous()
        exported.append(ExportedLayer(name, rank, alpha, error))
    rank, _ = Counter(e.rank for e in exported).most_common(1)[0]
    alpha, _ = Counter(e.alpha for e in exported if e.rank == rank).most_common(1)[0]
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if hasattr(model, "generate") else None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": [e.name for e in exported],
        "rank_pattern": {re.escape(e.name): e.rank for e in exported if e.rank != rank},
        "alpha_pattern": {re.escape(e.name): e.alpha for e in exported if (e.rank, e.alpha) != (rank, alpha)},
        "fan_in_fan_out": origins == {"Conv1D"},
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return exported
