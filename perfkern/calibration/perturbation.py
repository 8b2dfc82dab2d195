"""PIP-style element scores (arXiv 2501.15278): ``|W| ⊙ |∇_W L(clean) − ∇_W L(perturbed)|``, and the
perturbations that make the second view."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from perfkern import convert as _layers
from perfkern.calibration._common import (
    DEFAULT_EXCLUDE,
    Batch,
    LossFn,
    Patterns,
    Perturbation,
    _batches,
    _call,
    _evaluating,
    _linear_layers,
    _out_in,
    _warn_unreached,
)
from perfkern.ops._common import shape_str


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> tuple[Any, int]:
    """``batch`` with every tensor t replaced by fn(t) (kept where fn returns None), and how many were replaced."""
    if isinstance(batch, torch.Tensor):
        new = fn(batch)
        return (batch, 0) if new is None else (new, 1)
    if isinstance(batch, Mapping):
        mapped = {key: _map_tensors(value, fn) for key, value in batch.items()}
        return {key: value for key, (value, _) in mapped.items()}, sum(n for _, n in mapped.values())
    if isinstance(batch, tuple | list):
        mapped = [_map_tensors(value, fn) for value in batch]
        return type(batch)(value for value, _ in mapped), sum(n for _, n in mapped)
    return batch, 0


def gaussian_perturbation(std: float, generator: torch.Generator | None = None) -> Perturbation:
    """A perturbation for float inputs: ``x̃ = x + std·ε``, ε ~ N(0, 1) of x's shape, drawn afresh per call.

    Applies to every floating-point tensor of the batch (the tensor itself, the values of a dict, the items of a
    tuple); integer tensors and other values pass through. A batch without a floating-point tensor is an error
    (for token ids use ``token_dropout_perturbation``). ``generator`` makes the noise reproducible."""
    if not std >= 0:
        raise ValueError(f"std must be >= 0, got {std}")

    def perturb(batch: Batch) -> Batch:
        def noisy(t: torch.Tensor) -> torch.Tensor | None:
            if not t.is_floating_point():
                return None
            device = generator.device if generator is not None else t.device
            noise = torch.randn(t.shape, generator=generator, device=device, dtype=torch.float32)
            return t + (std * noise).to(device=t.device, dtype=t.dtype)

        out, count = _map_tensors(batch, noisy)
        if count == 0:
            raise TypeError(
                "gaussian_perturbation needs a floating-point tensor in the batch, got none; "
                "use token_dropout_perturbation for token ids"
            )
        return out

    return perturb


def token_dropout_perturbation(
    p: float, replacement: int = 0, key: str = "input_ids", generator: torch.Generator | None = None
) -> Perturbation:
    """A perturbation for token ids: each id is replaced by ``replacement`` with probability ``p``.

    Acts on ``batch[key]`` for a dict batch, on the batch itself for a tensor, on the first item for a tuple;
    the rest of the batch (attention masks, labels) is kept. The ids must be an integer tensor."""
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")

    def drop(ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"token_dropout_perturbation needs integer token ids, got {ids.dtype}")
        device = generator.device if generator is not None else ids.device
        hit = torch.rand(ids.shape, generator=generator, device=device).to(ids.device) < p
        return ids.masked_fill(hit, replacement)

    def perturb(batch: Batch) -> Batch:
        if isinstance(batch, torch.Tensor):
            return drop(batch)
        if isinstance(batch, Mapping):
            if key not in batch:
                raise KeyError(f"token_dropout_perturbation needs batch[{key!r}], got keys {sorted(batch)}")
            return {**batch, key: drop(batch[key])}
        if isinstance(batch, tuple | list) and batch:
            return type(batch)([drop(batch[0]), *batch[1:]])
        raise TypeError(f"token_dropout_perturbation needs a tensor, dict or tuple batch, got {type(batch).__name__}")

    return perturb


def _stack_views(clean: Any, perturbed: Any, where: str) -> Any:
    """One batch holding both views: every tensor of ``clean`` concatenated with its perturbed twin along dim 0."""
    if isinstance(clean, torch.Tensor):
        if not isinstance(perturbed, torch.Tensor) or perturbed.shape != clean.shape:
            got = shape_str(perturbed.shape) if isinstance(perturbed, torch.Tensor) else type(perturbed).__name__
            raise ValueError(f"perturb must keep {where} a tensor of shape {shape_str(clean.shape)}, got {got}")
        return torch.cat([clean, perturbed]) if clean.dim() else clean
    if isinstance(clean, Mapping):
        if not isinstance(perturbed, Mapping) or set(perturbed) != set(clean):
            got = sorted(perturbed) if isinstance(perturbed, Mapping) else type(perturbed).__name__
            raise ValueError(f"perturb must keep {where} a dict with keys {sorted(clean)}, got {got}")
        return {key: _stack_views(value, perturbed[key], f"{where}[{key!r}]") for key, value in clean.items()}
    if isinstance(clean, tuple | list):
        if not isinstance(perturbed, tuple | list) or len(perturbed) != len(clean):
            raise ValueError(f"perturb must keep {where} a sequence of {len(clean)} items, got {perturbed!r:.80}")
        return type(clean)(
            _stack_views(c, q, f"{where}[{i}]") for i, (c, q) in enumerate(zip(clean, perturbed, strict=True))
        )
    return clean


def _batch_size(batch: Any) -> int | None:
    """The leading size of the first tensor of ``batch`` that has one."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, tuple | list) else ()
    for value in values:
        if (size := _batch_size(value)) is not None:
            return size
    return None


def _halves(output: Any, n: int) -> tuple[Any, Any]:
    """Split a model output over the stacked batch into the clean and the perturbed output: tensors whose leading
    size is 2n are cut in two; anything else (caches, flags) is shared by both halves."""
    if isinstance(output, torch.Tensor):
        return (output[:n], output[n:]) if output.dim() and output.shape[0] == 2 * n else (output, output)
    if isinstance(output, Mapping):
        pairs = {key: _halves(value, n) for key, value in output.items()}
        rebuild = (lambda d: type(output)(**d)) if dataclasses.is_dataclass(output) else dict
        return rebuild({k: p[0] for k, p in pairs.items()}), rebuild({k: p[1] for k, p in pairs.items()})
    if isinstance(output, tuple | list):
        pairs = [_halves(value, n) for value in output]
        rebuild = (lambda items: type(output)(*items)) if hasattr(output, "_fields") else type(output)
        return rebuild([p[0] for p in pairs]), rebuild([p[1] for p in pairs])
    return output, output


def _loss(value: Any, which: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(
            f"loss_fn must return a floating-point tensor (a scalar or per-example losses) for the {which} view, "
            f"got {got}"
        )
    return value.mean() if value.dim() else value


def _gap_gradients(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    perturb: Perturbation,
    params: list[nn.Parameter],
    progress: bool,
    desc: str,
    consume: Callable[[tuple[torch.Tensor | None, ...]], None],
) -> None:
    """For every batch, ``consume(∇_params [L(clean) − L(perturbed)])`` (None for a parameter the loss does not
    reach), from one forward over both views stacked and one backward. Only ``params`` require grad meanwhile;
    every parameter's ``requires_grad`` is restored and no ``.grad`` is touched."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with torch.enable_grad(), _evaluating(model):
            for p, _ in saved:
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            for index, batch in _batches(batches, progress, desc):
                n = _batch_size(batch)
                if n is None:
                    raise ValueError(f"batches[{index}] holds no tensor with a batch dimension to stack the views on")
                both = _stack_views(batch, perturb(batch), f"batches[{index}]")
                clean, perturbed = _halves(_call(model, both, index), n)
                gap = _loss(loss_fn(clean, batch), "clean") - _loss(loss_fn(perturbed, batch), "perturbed")
                if not gap.requires_grad:
                    raise ValueError("loss_fn's result does not depend on any scored parameter")
                consume(torch.autograd.grad(gap, params, allow_unused=True))
    finally:
        for p, requires_grad in saved:
            p.requires_grad_(requires_grad)


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return list({id(p): p for p in params}.values())


def perturbation_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    perturb: Perturbation,
    include: Patterns | None = None,
    exclude: Patterns = DEFAULT_EXCLUDE,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """PIP-style element scores (DESIGN §3.2): ``S = |W| ⊙ Σ_b |∇_W L_b(clean) − ∇_W L_b(perturbed)|``.

    For each batch b, ``perturb(batch)`` gives the second view (same structure and shapes; e.g.
    ``gaussian_perturbation(std)`` for float inputs, ``token_dropout_perturbation(p)`` for token ids). The model
    runs ONCE on both views concatenated along dim 0 (every tensor of a dict or tuple batch), in eval mode; its
    output is cut back into the clean and the perturbed half (every output tensor whose leading size is twice
    the batch's). ``loss_fn(output_half, batch)`` is called on each half with the clean batch (so targets come
    from the clean data) and returns a scalar or per-example losses (averaged); it must compute the loss from the
    half it is given (e.g. its logits), not read a loss the model already reduced over both views (a Hugging Face
    ``output.loss`` from ``labels`` in the batch). Gradients are linear, so ONE
    backward of ``L(clean) − L(perturbed)`` gives the gradient gap [out, in] of every layer at once.

    Only the scored weights require grad during the call; every parameter's ``requires_grad`` and ``.grad`` are
    as before afterwards. Returns qualified name → S [out, in] fp32 for every selected layer the loss reached."""
    layers = _linear_layers(model, include, exclude)
    params = _unique(module.weight for _, module in layers)
    position = {id(p): i for i, p in enumerate(params)}
    gaps: dict[str, torch.Tensor] = {}

    def consume(grads: tuple[torch.Tensor | None, ...]) -> None:
        for name, module in layers:
            grad = grads[position[id(module.weight)]]
            if grad is not None:
                gap = _out_in(module, grad.detach().float()).abs()
                gaps[name] = gap if name not in gaps else gaps[name] + gap

    _gap_gradients(model, batches, loss_fn, perturb, params, progress, "perturbation scores", consume)
    scores = {
        name: _layers._dense_weight(module)[0].detach().float().abs() * gaps[name]
        for name, module in layers
        if name in gaps
    }
    _warn_unreached([name for name, _ in layers if name not in gaps], "perturbation scores")
    return scores
