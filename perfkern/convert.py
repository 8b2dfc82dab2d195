"""Model conversion (DESIGN §4): ``sparsify`` swaps a model's linear layers for ``SparseLoRALinear``, ``merge``
turns them back into dense layers, and the selection both use (``nn.Linear`` and Hugging Face ``Conv1D``)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from perfkern.nn import PeraLinear, SparseLoRALinear

__all__ = ["sparsify", "merge", "SkippedLayer", "select_linear_layers", "check_patterns"]


@dataclass(frozen=True)
class SkippedLayer:
    """A layer ``sparsify`` left dense, and why."""

    name: str
    reason: str


def _dense_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [out, in], bias) of an ``nn.Linear`` or a Hugging Face ``Conv1D`` (weight stored [in, out])."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2:
        return module.weight.t(), module.bias
    return None


def check_patterns(name: str, patterns) -> None:
    """A lone string is a common slip for a list of fnmatch patterns: say so rather than match its characters."""
    if isinstance(patterns, str):
        raise TypeError(f"{name} must be a list of fnmatch patterns, got the string {patterns!r}; use [{patterns!r}]")


def select_linear_layers(
    model: nn.Module,
    include: list[str] | tuple[str, ...] | None = None,
    exclude: list[str] | tuple[str, ...] = ("lm_head", "*.lm_head"),
) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every ``nn.Linear`` and Hugging Face ``Conv1D`` of ``model`` whose name matches
    an ``include`` fnmatch pattern (default: all) and no ``exclude`` pattern."""
    check_patterns("include", include)
    check_patterns("exclude", exclude)
    found = []
    for name, module in model.named_modules():
        if not name or _dense_weight(module) is None:
            continue
        if include is not None and not any(fnmatch.fnmatch(name, p) for p in include):
            continue
        if any(fnmatch.fnmatch(name, p) for p in exclude):
            continue
        found.append((name, module))
    return found


def sparsify(
    model: nn.Module,
    rank: int = 16,
    include: list[str] | tuple[str, ...] | None = None,
    exclude: list[str] | tuple[str, ...] = ("lm_head", "*.lm_head"),
    scores: dict[str, torch.Tensor] | None = None,
    progress: bool | None = None,
    **kwargs,
) -> list[SkippedLayer]:
    """Replace, in place, every ``nn.Linear`` (and Hugging Face ``Conv1D``) of ``model`` whose qualified name
    matches ``include`` (fnmatch patterns; default all) and no ``exclude`` pattern by a ``SparseLoRALinear``
    (``from_weight(weight, bias, rank, **kwargs)``). Layers whose shape the kernels cannot take stay dense.
    ``scores`` maps qualified names to importance scores [out, in] (e.g. Wanda's, from calibration) that choose
    those layers' masks instead of magnitude.

    Layers are converted one at a time on their own device, each dense layer released as its replacement goes in,
    so the peak memory is the model's plus one layer's. A model on the meta device is converted without memory
    or computation. ``progress``: a progress bar (default: for models with at least 32 layers to convert).

    Returns the layers left dense with the reason for each (excluded ones are not listed)."""
    skipped: list[SkippedLayer] = []
    targets = []
    needs_n16 = kwargs.get("backward", "double") == "double" or kwargs.get("pattern") == "transposable"
    for name, module in select_linear_layers(model, include, exclude):
        out_features, in_features = _dense_weight(module)[0].shape
        if in_features % 16 != 0:
            skipped.append(SkippedLayer(name, f"in_features={in_features} is not a multiple of 16"))
        elif needs_n16 and out_features % 16 != 0:
            skipped.append(SkippedLayer(name, f"out_features={out_features} is not a multiple of 16"))
        else:
            targets.append(name)
    default_mask = kwargs.pop("mask", "magnitude")
    if progress is None:
        progress = len(targets) >= 32
    from tqdm.auto import tqdm

    for name in tqdm(targets, desc="sparsify", unit="layer", disable=not progress):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        dense = getattr(parent, child)
        weight, bias = _dense_weight(dense)
        mask = scores[name] if scores is not None and name in scores else default_mask
        layer = SparseLoRALinear.from_weight(weight, bias, rank=rank, mask=mask, **kwargs)
        layer.dense_origin = type(dense)
        del dense, weight, bias  # the dense layer goes as soon as its replacement is in
        setattr(parent, child, layer)
    return skipped


def merge(model: nn.Module, adapters: bool = True) -> nn.Module:
    """Replace, in place, every ``SparseLoRALinear`` and ``PeraLinear`` of ``model`` by a dense layer computing the
    same function (adapter merged), for export: an ``nn.Linear``, or the Hugging Face ``Conv1D`` it was made from
    (weight stored [in, out] again), so the model's state_dict has its original names and shapes. Returns ``model``.

    ``adapters=False`` leaves the adapters out: the dense 2:4 base (a ``PeraLinear``'s own base layer), on which an
    adapter exported by ``perfkern.export_lora`` (e.g. loaded with ``PeftModel.from_pretrained``) gives the adapted
    model back."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, SparseLoRALinear | PeraLinear)]
    for name, layer in targets:
        if isinstance(layer, PeraLinear):
            dense = layer.to_linear() if adapters else layer.base
        else:
            dense = _dense_copy(layer, adapters)
        if not name:
            return dense
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, dense)
    return model


def _dense_copy(layer: SparseLoRALinear, adapters: bool) -> nn.Module:
    dense = layer.to_linear(adapters)
    origin = getattr(layer, "dense_origin", nn.Linear)
    if origin is nn.Linear or origin.__name__ != "Conv1D":
        return dense
    conv = origin(layer.out_features, layer.in_features).to(device=dense.weight.device, dtype=dense.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(dense.weight.t())
        if dense.bias is not None:
            conv.bias.copy_(dense.bias)
        else:
            conv.bias.zero_()
    return conv
