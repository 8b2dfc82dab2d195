"""``PerfkernCallback``: SLoPe's schedule and the dendrite cycle inside Hugging Face ``Trainer``
(re-exported by ``perfkern.integrations.transformers``)."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import TrainerCallback

from perfkern.dendrites import CorrelationState, DendriteLayer, batch_moments
from perfkern.nn import PeraLinear, SparseLoRALinear

DENDRITE_DEFAULTS = {
    "patience": 2,
    "min_improvement": 1e-2,
    "max_dendrite_evals": 5,
    "max_dendrites": 4,
    "installed": "trainable",
}


class PerfkernCallback(TrainerCallback):
    """SLoPe in ``Trainer``: lazy adapters switched on late, backward masks refreshed per optimizer step, and
    optionally the dendrite cycle on evaluation plateaus. Each event goes to the Trainer's log
    (``state.log_history``, saved in ``trainer_state.json``) as ``{"perfkern": "<what happened>", "step": s}``
    and to ``events``.

    Args:
        adapter_start: fraction of ``max_steps`` after which the lazy adapters of ``SparseLoRALinear`` and
            ``PeraLinear`` layers are switched on (SLoPe turns them on for the last part of training, e.g. 0.8);
            None leaves the switches alone.
        dendrites: None (off), or options for the dendrite cycle over the model's ``DendriteLayer``s
            (``perfkern.dendrites.add_dendrites`` before the ``Trainer`` is built, so its optimizer holds the
            candidates): ``patience`` evaluations without a relative improvement of ``min_improvement`` in
            ``eval_loss`` start a dendrite phase (base frozen, candidates train on the correlation objective with
            the Trainer's optimizer); ``patience`` evaluations without a better candidate, or
            ``max_dendrite_evals``, end it: each neuron installs its best candidate (output weight 0, added to the
            optimizer with, for ``installed="trainable"`` (the default, as ``DendriteTrainer``), its input maps;
            ``"frozen"`` trains the output weight only) and training resumes. ``max_dendrites`` bounds the
            dendrites per layer. Needs evaluations (``eval_strategy``).

    The backward masks are re-chosen by the layers themselves every ``refresh_every`` optimizer steps (a
    ``torch.optim`` step hook; with gradient accumulation once per optimizer step, from the updated weight). The
    callback reports the refreshes, and counts the step itself for an optimizer that is not a ``torch.optim``
    one."""

    def __init__(self, adapter_start: float | None = 0.8, dendrites: dict | None = None) -> None:
        if adapter_start is not None and not 0.0 <= adapter_start <= 1.0:
            raise ValueError(f"adapter_start must be a fraction of max_steps in [0, 1] or None, got {adapter_start}")
        unknown = set(dendrites or {}) - set(DENDRITE_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown dendrite options {sorted(unknown)}; known: {sorted(DENDRITE_DEFAULTS)}")
        self.adapter_start = adapter_start
        self.dendrite_options = None if dendrites is None else {**DENDRITE_DEFAULTS, **dendrites}
        if self.dendrite_options is not None and self.dendrite_options["installed"] not in ("trainable", "frozen"):
            raise ValueError(f"installed must be 'trainable' or 'frozen', got {self.dendrite_options['installed']!r}")
        self.events: list[str] = []
        self.adapters_on = False
        self.phase = "neuron"
        self._layers: list[SparseLoRALinear] = []
        self._counts: list[int] = []
        self._dendrites: list[DendriteLayer] = []
        self._states: dict[int, CorrelationState] = {}
        self._pending: dict[int, list] = {}
        self._best = math.inf
        self._stale = 0
        self._phase_evals = 0

    def _say(self, state, line: str, step: int | None = None) -> None:
        step = state.global_step if step is None else step
        self.events.append(f"step {step}: {line}")
        state.log_history.append({"perfkern": line, "step": step})

    def on_train_begin(self, args, state, control, model: nn.Module = None, **kwargs):
        self._layers = [m for m in model.modules() if isinstance(m, SparseLoRALinear) and m.backward == "double"]
        self._dendrites = [m for m in model.modules() if isinstance(m, DendriteLayer)]
        if self.dendrite_options is not None and not self._dendrites:
            raise ValueError("PerfkernCallback(dendrites=...) found no DendriteLayer: call add_dendrites first")
        adapters = [m for m in model.modules() if isinstance(m, SparseLoRALinear | PeraLinear) and m.adapter]
        if self.adapter_start is not None:
            self._switch_at = int(self.adapter_start * state.max_steps)
            self.adapters_on = all(m.adapter_active for m in adapters)
        self._adapters = adapters

    def on_step_begin(self, args, state, control, **kwargs):
        if self.adapter_start is not None and not self.adapters_on and state.global_step >= self._switch_at:
            for layer in self._adapters:
                layer.enable_adapter()
            self.adapters_on = True
            self._say(
                state,
                f"adapters on in {len(self._adapters)} layers after {state.global_step} of {state.max_steps} steps",
            )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._counts = [layer._updates for layer in self._layers]
        if self.phase == "dendrite":
            self._correlation_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        refreshed = 0
        for layer, before in zip(self._layers, self._counts, strict=True):
            if layer._updates == before and layer.values.grad is not None:
                layer.count_optimizer_step()  # an optimizer the torch.optim step hook does not see
            if layer._updates != before and layer._updates % layer.refresh_every == 0:
                refreshed += 1
        if refreshed:  # during optimizer step global_step + 1
            self._say(state, f"backward masks re-chosen in {refreshed} layers", state.global_step + 1)

    def on_evaluate(self, args, state, control, metrics=None, model=None, optimizer=None, lr_scheduler=None, **kw):
        options = self.dendrite_options
        if options is None or not metrics or "eval_loss" not in metrics:
            return
        self._phase_evals += 1
        if self.phase == "neuron":
            loss = metrics["eval_loss"]
            if loss < self._best * (1 - options["min_improvement"]):
                self._best, self._stale = loss, 0
            else:
                self._stale += 1
            full = all(layer.num_dendrites >= options["max_dendrites"] for layer in self._dendrites)
            if self._stale >= options["patience"] and not full and state.global_step < state.max_steps:
                self._start_dendrite_phase(state, model, optimizer, lr_scheduler, loss)
            return
        improved = [bool(s.close_epoch().any()) for s in self._states.values()]  # every layer closes
        self._stale = 0 if any(improved) else self._stale + 1
        if self._stale >= options["patience"] or self._phase_evals >= options["max_dendrite_evals"]:
            self._install(state, optimizer, lr_scheduler)

    def _base_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        owned = {id(p) for layer in self._dendrites for p in layer.candidate_parameters()}
        return [p for p in model.parameters() if id(p) not in owned]

    def _collect(self, layer: DendriteLayer, values, errors) -> None:
        # Called from a layer's backward hook with V [P, C, N] and E [P, N]; folded before the optimizer step.
        self._pending.setdefault(self._dendrites.index(layer), []).append((values, errors))

    def _correlation_step(self) -> None:
        """Fold the statistics of this optimizer step's micro-batches and give the candidates their gradient of
        the correlation objective (``DendriteTrainer.after_backward``, for one process)."""
        pending, self._pending = self._pending, {}
        tensors, grads = [], []
        for i, entries in sorted(pending.items()):
            values = torch.cat([v for v, _ in entries]).unsqueeze(0)
            errors = torch.cat([e for _, e in entries]).unsqueeze(0)
            batch = batch_moments(values.detach(), errors)
            self._states[i].fold(batch)
            tensors.append(values)
            grads.append(self._states[i].candidate_grad(values.detach(), errors, batch))
        if tensors:
            torch.autograd.backward(tensors, grads)

    def _start_dendrite_phase(self, state, model, optimizer, lr_scheduler, loss) -> None:
        self._frozen = [p for p in self._base_parameters(model) if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
            p.grad = None
        limit = self.dendrite_options["max_dendrites"]
        active = [i for i, layer in enumerate(self._dendrites) if layer.num_dendrites < limit]
        self._states, self._pending = {}, {}
        for i in active:
            layer = self._dendrites[i]
            layer.grow_candidates("correlation")
            layer.collector = self._collect
            self._states[i] = CorrelationState(1, layer.num_candidates, layer.out_features, mode=layer.mode,
                                               device=layer.candidate_parameters()[0].device)  # fmt: skip
        if optimizer is not None:
            # The fresh candidates train with the Trainer's optimizer, in a group of their own until installation.
            candidates = [p for i in active for p in self._dendrites[i].candidate_parameters()]
            _add_parameters(optimizer, lr_scheduler, candidates)
        self.phase, self._stale, self._phase_evals = "dendrite", 0, 0
        self._say(state, f"eval loss plateaued at {loss:.4f}: dendrite phase in {len(active)} layers "
                         "(base frozen)")  # fmt: skip

    def _install(self, state, optimizer, lr_scheduler) -> None:
        if optimizer is not None:
            candidates = {id(p) for i in self._states for p in self._dendrites[i].candidate_parameters()}
            for index in reversed(range(len(optimizer.param_groups))):
                if any(id(p) in candidates for p in optimizer.param_groups[index]["params"]):
                    _remove_group(optimizer, lr_scheduler, index)
        input_maps = self.dendrite_options["installed"] == "trainable"
        for i, layer_state in self._states.items():
            layer = self._dendrites[i]
            layer.collector = None
            layer.install(layer_state.best_candidates()[0])
            dendrite = layer.dendrites[-1]
            params = (dendrite.input_maps() if input_maps else []) + [dendrite.w]
            for p in params:
                p.requires_grad_(True)
            if optimizer is not None:
                _add_parameters(optimizer, lr_scheduler, params)
        for p in self._frozen:
            p.requires_grad_(True)
        counts = [layer.num_dendrites for layer in self._dendrites]
        self.phase, self._stale, self._phase_evals, self._best = "neuron", 0, 0, math.inf
        self._states, self._pending = {}, {}
        self._say(state, f"dendrites installed, per layer {counts}; neuron phase resumes")


def _add_parameters(optimizer, lr_scheduler, params: list[nn.Parameter]) -> None:
    """Add ``params`` to the Trainer's optimizer as a group of their own, scheduled like the first group."""
    optimizer.add_param_group({"params": params})
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps the scheduler
    if scheduler is None:
        return
    group = optimizer.param_groups[-1]
    group.setdefault("initial_lr", group["lr"])
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs.append(group["initial_lr"])
    if hasattr(scheduler, "lr_lambdas"):
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])


def _remove_group(optimizer, lr_scheduler, index: int) -> None:
    """Remove the optimizer's param group ``index``, its state, and its entries in the scheduler."""
    for p in optimizer.param_groups[index]["params"]:
        optimizer.state.pop(p, None)
    del optimizer.param_groups[index]
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    for attr in ("base_lrs", "lr_lambdas"):
        entries = getattr(scheduler, attr, None)
        if isinstance(entries, list) and len(entries) > index:
            del entries[index]
