"""PIP's structured side: rank whole layers or blocks by the clean-vs-perturbed gradient gap, and remove the
least important ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    _linear_layers,
)
from perfkern.calibration.perturbation import _gap_gradients, _unique
from perfkern.ops._common import shape_str


class SkipBlock(nn.Module):
    """Stands in for a removed block: returns the block's first input (the hidden states) unchanged.

    The contract: the removed block mapped hidden states to hidden states of the same shape, taken as its first
    positional argument (or the ``hidden_states`` keyword, else its first keyword argument). ``returns`` gives
    the structure of the output: ``"tensor"``; ``"tuple"`` (``(hidden, None, ...)`` of the block's tuple length,
    as blocks that also return attention weights or caches); ``"auto"`` runs the removed block once, on the first
    call, to learn its structure and check the shape contract, then drops it. The removed block is never a
    submodule: it has no parameters, buffers or state_dict entries here."""

    def __init__(self, removed: nn.Module | None = None, returns: str = "auto", length: int = 1) -> None:
        super().__init__()
        if returns not in ("auto", "tensor", "tuple"):
            raise ValueError(f"returns must be 'auto', 'tensor' or 'tuple', got {returns!r}")
        if returns == "auto" and removed is None:
            raise ValueError("returns='auto' needs the removed block, to learn what it returns")
        self.returns, self.length = returns, length
        self.replaced = type(removed).__name__ if removed is not None else "block"
        self.__dict__["_probe"] = removed if returns == "auto" else None

    def _learn(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> None:
        block = self.__dict__["_probe"]
        with torch.no_grad():
            out = block.to(hidden.device)(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) and out else out
        if not isinstance(first, torch.Tensor):
            raise TypeError(
                f"SkipBlock replaces blocks that return a tensor or a tuple starting with one; the removed "
                f"{self.replaced} returned {type(out).__name__}"
            )
        if first.shape != hidden.shape:
            raise ValueError(
                f"SkipBlock needs a block that keeps the hidden states' shape: the removed {self.replaced} maps "
                f"{shape_str(hidden.shape)} to {shape_str(first.shape)}"
            )
        self.returns, self.length = ("tuple", len(out)) if isinstance(out, tuple) else ("tensor", 1)
        self.__dict__["_probe"] = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor | None, ...]:
        hidden = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"SkipBlock's first input must be the hidden states tensor, got {type(hidden).__name__}")
        if self.returns == "auto":
            self._learn(hidden, args, kwargs)
        if self.returns == "tensor":
            return hidden
        return (hidden,) + (None,) * (self.length - 1)

    def extra_repr(self) -> str:
        return f"replaces={self.replaced}, returns={self.returns}"


def _blocks(model: nn.Module, blocks: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    if blocks is None:
        for prefix, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module):
                names = [f"{prefix}.{i}" if prefix else str(i) for i in range(len(module))]
                break
        else:
            raise ValueError("granularity='block' needs blocks=[qualified names]: the model has no nn.ModuleList")
    else:
        _layers.check_patterns("blocks", blocks)
        names = list(blocks)
    found = []
    for i, name in enumerate(names):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"blocks[{i}] = {name!r} is not a submodule of the model") from None
        if not isinstance(module, SkipBlock):
            found.append((name, module))
    return found


def pip_layer_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    perturb: Perturbation,
    granularity: str = "layer",
    blocks: Sequence[str] | None = None,
    progress: bool = True,
    *,
    include: Patterns | None = None,
    exclude: Patterns = DEFAULT_EXCLUDE,
    normalize: bool = True,
) -> list[tuple[str, float]]:
    """PIP's importance of whole units, least important first: ``[(qualified name, score), ...]``.

    ``score(u) = 1/(P_u·B) · Σ_b Σ_{θ ∈ u} ‖∇_θ L_b(clean) − ∇_θ L_b(perturbed)‖₂²`` over the B batches and all
    parameters θ of unit u (weights, biases, norms), P_u its parameter count; ``normalize=False`` drops the
    1/(P_u·B), leaving the raw sum, which favours removing small units. The per-parameter mean lets units of
    different sizes compete. A unit whose gradient barely tells the two views apart scores low. The gaps come
    from one forward and one backward per batch, as in ``perturbation_scores`` (same ``loss_fn``, ``perturb``).

    Units: ``granularity="layer"``: every ``nn.Linear`` / ``Conv1D`` that ``include`` / ``exclude`` select;
    ``"block"``: the submodules named by ``blocks`` (e.g. the decoder layers), by default the children of the
    first ``nn.ModuleList`` of the model. Blocks already replaced by ``SkipBlock`` are left out."""
    if granularity == "layer":
        if blocks is not None:
            raise ValueError("blocks is for granularity='block', got granularity='layer'")
        units = _linear_layers(model, include, exclude)
    elif granularity == "block":
        units = _blocks(model, blocks)
    else:
        raise ValueError(f"granularity must be 'layer' or 'block', got {granularity!r}")
    unit_params = [(name, _unique(module.parameters())) for name, module in units]
    if empty := [name for name, params in unit_params if not params]:
        raise ValueError(f"these units have no parameters to score: {', '.join(empty)}")
    params = _unique(p for _, ps in unit_params for p in ps)
    position = {id(p): i for i, p in enumerate(params)}
    totals = {name: torch.zeros((), dtype=torch.float64) for name, _ in unit_params}
    seen = [0]

    def consume(grads: tuple[torch.Tensor | None, ...]) -> None:
        seen[0] += 1
        for name, ps in unit_params:
            for p in ps:
                grad = grads[position[id(p)]]
                if grad is not None:
                    totals[name] += grad.detach().double().square().sum().cpu()

    _gap_gradients(model, batches, loss_fn, perturb, params, progress, f"PIP {granularity} scores", consume)
    scores = []
    for name, ps in unit_params:
        scale = sum(p.numel() for p in ps) * seen[0] if normalize else 1
        scores.append((name, float(totals[name]) / scale))
    return sorted(scores, key=lambda item: item[1])


def pip_prune_blocks(
    model: nn.Module,
    scores: Sequence[tuple[str, float]],
    n: int,
    recompute: Callable[[nn.Module], Sequence[tuple[str, float]]] | None = None,
    returns: str = "auto",
) -> list[str]:
    """Remove, in place, the ``n`` least important blocks: each is replaced by a ``SkipBlock`` that passes its
    hidden states through (see ``SkipBlock`` for the contract and ``returns``). Returns the removed names in order.

    ``scores`` are ``pip_layer_scores(..., granularity="block")``'s (name, score) pairs. Without ``recompute`` the
    n lowest go at once; with it, PIP's greedy loop: remove the lowest, call ``recompute(model)`` on the pruned
    model for fresh scores (e.g. ``lambda m: pip_layer_scores(m, batches, loss_fn, perturb, "block")``), remove the
    lowest of those, and so on."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    removed: list[str] = []
    current = list(scores)
    for step in range(n):
        if step and recompute is not None:
            current = list(recompute(model))
        candidates = []
        for i, entry in enumerate(current):
            if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise TypeError(f"scores[{i}] must be a (qualified name, score) pair, got {entry!r:.80}")
            name = entry[0]
            if not name:
                raise ValueError(f"scores[{i}] names the model itself; only its submodules can be removed")
            try:
                module = model.get_submodule(name)
            except AttributeError:
                continue
            if name not in removed and not isinstance(module, SkipBlock):
                candidates.append((float(entry[1]), name, module))
        if not candidates:
            raise ValueError(f"n={n} blocks asked for, but only {len(removed)} scored blocks could be removed")
        _, name, module = min(candidates, key=lambda c: c[0])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SkipBlock(module, returns))
        removed.append(name)
    return removed
