"""Per-layer sparsity of a model: counts and a printable table."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from perfkern import convert as _layers


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """One row of ``summarize``: a layer's dense weight [out, in] and how many of its entries are zero. For a
    ``SparseLoRALinear`` the weight is its sparse Ws (from the compressed values; the adapter is not counted)."""

    name: str
    kind: str
    shape: tuple[int, int]
    zeros: int
    total: int

    @property
    def kept(self) -> int:
        return self.total - self.zeros

    @property
    def fraction(self) -> float:
        """The fraction of zero weights."""
        return self.zeros / self.total if self.total else 0.0


@torch.no_grad()
def summarize(model: nn.Module) -> list[LayerSparsity]:
    """A ``LayerSparsity`` row for every ``SparseLoRALinear``, ``nn.Linear`` and ``Conv1D`` of ``model``, in module
    order (the root is named ``"(model)"``)."""
    rows = []
    for name, module in model.named_modules():
        label = name or "(model)"
        if isinstance(module, _layers.SparseLoRALinear):
            total = module.out_features * module.in_features
            kept = int(torch.count_nonzero(module.values))
            rows.append(
                LayerSparsity(label, "SparseLoRALinear", (module.out_features, module.in_features), total - kept, total)
            )
            continue
        found = _layers._dense_weight(module)
        if found is not None:
            weight = found[0]
            total = weight.numel()
            kept = int(torch.count_nonzero(weight))
            rows.append(LayerSparsity(label, type(module).__name__, tuple(weight.shape), total - kept, total))
    return rows


def sparsity_summary(model: nn.Module) -> str:
    """``summarize(model)`` as a table: name, type, shape [out x in], zero fraction, kept / total, and a total row."""
    rows = summarize(model)
    if not rows:
        return "no SparseLoRALinear, nn.Linear or Conv1D layer"
    zeros, total = sum(r.zeros for r in rows), sum(r.total for r in rows)
    table = [("name", "type", "shape", "zeros", "kept / total")]
    table += [
        (r.name, r.kind, f"{r.shape[0]}x{r.shape[1]}", f"{r.fraction:.1%}", f"{r.kept} / {r.total}") for r in rows
    ]
    table.append((f"total ({len(rows)} layers)", "", "", f"{zeros / total:.1%}", f"{total - zeros} / {total}"))
    widths = [max(len(row[c]) for row in table) for c in range(5)]
    lines = []
    for row in table:
        cells = [row[c].ljust(widths[c]) if c < 3 else row[c].rjust(widths[c]) for c in range(5)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
