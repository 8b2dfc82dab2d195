"""What every calibration method shares: the layers it scores, the batches it runs, the model's training state
kept intact, and the forward pre-hooks that see each layer's input."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from perfkern import convert as _layers

Batch = torch.Tensor | Mapping[str, Any] | tuple[Any, ...]
LossFn = Callable[[Any, Batch], torch.Tensor]
Perturbation = Callable[[Batch], Batch]
Patterns = Sequence[str]

DEFAULT_EXCLUDE: tuple[str, ...] = ("lm_head", "*.lm_head")


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


def _observe_inputs(
    model: nn.Module,
    batches: Iterable[Batch],
    layers: list[tuple[str, nn.Module]],
    record: Callable[[str, torch.Tensor], None],
    progress: bool,
    desc: str,
) -> None:
    """Runs the model on every batch under ``torch.no_grad`` in eval mode, calling ``record(name, x)`` with every
    input of every layer; hooks and training flags are restored afterwards, also on error."""
    with torch.no_grad(), _evaluating(model), _input_hooks(layers, record):
        for index, batch in _batches(batches, progress, desc):
            _call(model, batch, index)
