"""Wanda scores (Sun et al. 2023): ``|W|·‖X_j‖₂`` from the norms of each layer's input channels."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from perfkern import convert as _layers
from perfkern.calibration._common import (
    DEFAULT_EXCLUDE,
    Batch,
    Patterns,
    _linear_layers,
    _observe_inputs,
    _warn_unreached,
)


def wanda_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    include: Patterns | None = None,
    exclude: Patterns = DEFAULT_EXCLUDE,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Wanda's importance scores (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

    ``S_ij = |W_ij| · ‖X_j‖₂`` with W [out, in] and X [n, in] every input row the layer saw over all ``batches``
    (inputs [..., in] are flattened to rows), ‖X_j‖₂ = sqrt(Σ_t X_tj²). The norms are accumulated in fp32 by
    forward pre-hooks, under ``torch.no_grad`` with the model in eval mode; the hooks and every module's training
    flag are restored afterwards, also on error.

    Returns qualified name → S [out, in] fp32 for every selected layer some batch reached (a warning names the
    others). ``mask_2to4(S)`` or ``sparsify(model, scores=S)`` keeps the two largest per group of 4 along in.
    """
    layers = _linear_layers(model, include, exclude)
    sumsq: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        total = rows.square().sum(0)
        sumsq[name] = total if name not in sumsq else sumsq[name] + total

    _observe_inputs(model, batches, layers, record, progress, "wanda")
    scores = {}
    for name, module in layers:
        if name in sumsq:
            weight = _layers._dense_weight(module)[0].detach().float()
            scores[name] = weight.abs() * sumsq[name].to(weight.device).sqrt()[None, :]
    _warn_unreached([name for name, _ in layers if name not in sumsq], "Wanda scores")
    return scores
