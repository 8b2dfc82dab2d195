"""Calibration-based pruning (DESIGN §3.2): Wanda and PIP-style perturbation scores for 2:4 masks, PIP's
layer/block ranking and block removal, SparseGPT's 2:4 pruning with weight update, and a sparsity summary.

Every scorer runs the model on calibration ``batches``: an iterable of model inputs, each a tensor (``model(x)``),
a dict of keyword arguments (``model(**batch)``, as Hugging Face models take) or a tuple of positional arguments
(``model(*batch)``). The scored layers are the ``nn.Linear`` and Hugging Face ``Conv1D`` modules whose qualified
names match an ``include`` pattern (fnmatch; default all) and no ``exclude`` pattern, as in ``sparsify``. Scores
are fp32 [out, in] whatever the layer stores (``Conv1D`` keeps its weight [in, out]), ready for
``sparsify(model, scores=...)`` and ``mask_2to4``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from perfkern import nn as _layers
from perfkern.ops._common import shape_str

__all__ = [
    "wanda_scores",
    "perturbation_scores",
    "gaussian_perturbation",
    "token_dropout_perturbation",
    "pip_layer_scores",
    "pip_prune_blocks",
    "SkipBlock",
    "collect_hessians",
    "sparsegpt_prune_2to4",
    "apply_sparsegpt_2to4",
    "LayerSparsity",
    "summarize",
    "sparsity_summary",
]

Batch = torch.Tensor | Mapping[str, Any] | tuple[Any, ...]
LossFn = Callable[[Any, Batch], torch.Tensor]
Perturbation = Callable[[Batch], Batch]
Patterns = Sequence[str]

DEFAULT_EXCLUDE: tuple[str, ...] = ("lm_head", "*.lm_head")


# Layers, batches and the model's state.


def _linear_layers(model: nn.Module, include: Patterns | None, exclude: Patterns) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every ``nn.Linear`` / ``Conv1D`` that ``include`` and ``exclude`` select (as
    ``sparsify`` selects them); an error if there is none."""
    found = _layers.select_linear_layers(model, include, exclude)
    if not found:
        raise ValueError(
            f"no nn.Linear or Conv1D layer of the model matches include={include!r} and exclude={tuple(exclude)!r}"
        )
    return found


def _out_in(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``t`` shaped like ``module.weight``, as [out, in] (a ``Conv1D`` stores [in, out])."""
    return t if isinstance(module, nn.Linear) else t.t()


def _batches(batches: Iterable[Batch], progress: bool, desc: str) -> Iterator[tuple[int, Batch]]:
    if isinstance(batches, torch.Tensor | Mapping):
        raise TypeError(
            f"batches must be an iterable of batches (a list, a DataLoader), got a single {type(batches).__name__}; "
            "wrap it in a list"
        )
    count = 0
    with tqdm(batches, desc=desc, unit="batch", disable=not progress) as bar:
        for count, batch in enumerate(bar, start=1):
            yield count - 1, batch
    if count == 0:
        raise ValueError("batches must hold at least one batch, got none")


def _call(model: nn.Module, batch: Batch, index: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, tuple | list):
        return model(*batch)
    raise TypeError(
        f"batches[{index}] must be a tensor, a dict of keyword arguments or a tuple of positional arguments, "
        f"got {type(batch).__name__}"
    )


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the duration, then every submodule's own training flag back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _input_hooks(layers: list[tuple[str, nn.Module]], record: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Calls ``record(name, x)`` with the input x [..., in] of every call of every layer; the hooks go on exit."""

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            record(name, args[0] if args else next(iter(kwargs.values())))

        return hook

    handles = []
    try:
        for name, module in layers:
            handles.append(module.register_forward_pre_hook(hook_for(name), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _warn_unreached(names: list[str], what: str) -> None:
    if names:
        warnings.warn(
            f"no calibration input reached {', '.join(names)}; they get no {what} (sparsify falls back to magnitude)",
            stacklevel=3,
        )


# Wanda.


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

    with torch.no_grad(), _evaluating(model), _input_hooks(layers, record):
        for index, batch in _batches(batches, progress, "wanda"):
            _call(model, batch, index)
    scores = {}
    for name, module in layers:
        if name in sumsq:
            weight = _layers._dense_weight(module)[0].detach().float()
            scores[name] = weight.abs() * sumsq[name].to(weight.device).sqrt()[None, :]
    _warn_unreached([name for name, _ in layers if name not in sumsq], "Wanda scores")
    return scores


# PIP-style perturbation scores.


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


# PIP: ranking and removing whole layers or blocks.


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


# SparseGPT.


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

    with torch.no_grad(), _evaluating(model), _input_hooks(layers, record):
        for index, batch in _batches(batches, progress, "hessians"):
            _call(model, batch, index)
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


# The summary.


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
