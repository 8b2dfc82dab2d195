"""``DendriteTrainer``: the neuron / dendrite cycle of Perforated Backpropagation on ``DendriteLayer``s.

Use::

    trainer = DendriteTrainer(model, layers, lambda params: torch.optim.Adam(params, lr=1e-3))
    for epoch in range(epochs):
        for x, y in batches:
            trainer.step(loss_fn(model(x), y))     # backward, the phase's own work, one optimizer step
        trainer.end_epoch(validation_loss())       # switches phases on plateaus and says what it did

- **neuron phase**: the model's trainable parameters and the dendrites' output weights w train on the task loss
  (and the dendrites' input maps too with ``installed="trainable"``). When the validation loss has not improved
  by a fraction ``min_improvement`` for ``patience`` epochs, the dendrite phase starts.
- **dendrite phase**: the model is frozen and each layer grows fresh candidates. ``objective="correlation"``
  (Cascade-Correlation): C candidates per neuron train to maximise Σ |score| (``CorrelationState``); the phase
  ends when no neuron's best epoch score improved by ``correlation_tol`` for ``patience`` epochs, or after
  ``max_dendrite_epochs``; each neuron installs its best candidate with w = 0. ``objective="gd"`` (a baseline,
  as Perforated AI's gradient-descent dendrites): one candidate per neuron joins the output with w = 0 and trains
  on the task loss; the phase ends on a validation plateau as the neuron phase does; it is installed as trained.
  Installing drops every candidate parameter and its optimizer state.

Options at a switch: ``rollback`` returns the model (parameters, buffers, optimizer state) to its state at the
best validation loss of the phase that ends (a neuron phase, or a GD dendrite phase); ``switch_optimizer="keep"``
keeps one neuron optimizer for the whole run (its state survives the dendrite phases, installed dendrites join it
as new parameter groups), ``"rebuild"`` builds a fresh one after every installation.

``state_dict`` / ``load_state_dict`` save and restore the cycle (phase, counters, running statistics, optimizer
states, the rollback snapshot, the RNG states), so that a run resumed from ``model.state_dict()`` and
``trainer.state_dict()`` continues bit for bit, given the same batches in the same order.

Data parallelism (``torch.distributed`` initialised, or ``process_group`` given): build the DDP wrapper with
``wrap_ddp``. Every rank folds the same statistics: each rank's batch statistics are merged across ranks with
Chan's formulas (``merge_across_ranks``), never the scores averaged; the neuron errors are divided by the world
size, as DDP's averaged gradient implies; the candidates' gradients are summed across ranks (each rank's share of
the global batch's gradient) and the other parameters the trainer owns (installed dendrites) averaged, as DDP does.
``end_epoch`` averages the validation loss over ranks. So every rank switches at the same step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from perfkern.dendrites.layer import OBJECTIVES, DendriteLayer
from perfkern.dendrites.state import CorrelationState, Moments, batch_moments, merge_across_ranks

__all__ = ["DendriteTrainer"]

INSTALLED = ("frozen", "trainable")
SWITCH_OPTIMIZER = ("keep", "rebuild")


def _choose(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


class DendriteTrainer:
    """Alternates neuron and dendrite phases on validation plateaus and says what it does (module docstring).

    Args:
        model: the model holding ``layers`` (not its DDP wrapper).
        layers: its ``DendriteLayer``s (as ``add_dendrites`` returns them).
        make_optimizer: builds an optimizer over a list of parameters (called for the neuron phase and for every
            dendrite phase's candidates).
        patience: epochs without improvement before a phase ends.
        min_improvement: relative drop of the validation loss that counts as an improvement.
        max_dendrite_epochs: longest dendrite phase, in epochs.
        max_dendrites: dendrites per layer at most; no dendrite phase starts once every layer has them.
        window, beta, correlation_tol: the running statistics' cumulative window, EMA factor and the relative
            improvement of a neuron's best epoch score that counts as progress (``CorrelationState``).
        objective: ``"correlation"`` (Cascade-Correlation candidates) or ``"gd"`` (gradient-descent candidates).
        installed: ``"frozen"`` (Cascade-Correlation: only w trains once installed) or ``"trainable"`` (the
            dendrites' input maps train with the neuron phase too).
        rollback: at a switch, return to the best validation state of the phase that ends.
        switch_optimizer: ``"keep"`` or ``"rebuild"`` the neuron optimizer after an installation.
        process_group: the group to reduce over (default: the default group when ``torch.distributed`` is
            initialised).
        log: receives one line per event; ``events`` keeps them.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Iterable[DendriteLayer],
        make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        patience: int = 1,
        min_improvement: float = 1e-2,
        max_dendrite_epochs: int = 1,
        max_dendrites: int = 4,
        window: int = 20,
        beta: float = 0.99,
        correlation_tol: float = 1e-3,
        objective: str = "correlation",
        installed: str = "trainable",
        rollback: bool = False,
        switch_optimizer: str = "keep",
        process_group: dist.ProcessGroup | None = None,
        log: Callable[[str], None] | None = print,
    ) -> None:
        self.model, self.layers = model, list(layers)
        if not self.layers:
            raise ValueError("DendriteTrainer needs at least one DendriteLayer")
        self.make_optimizer = make_optimizer
        self.patience, self.max_dendrite_epochs, self.max_dendrites = patience, max_dendrite_epochs, max_dendrites
        self.min_improvement = min_improvement
        self.window, self.beta, self.correlation_tol = window, beta, correlation_tol
        self.objective = _choose("objective", objective, OBJECTIVES)
        self.installed = _choose("installed", installed, INSTALLED)
        self.switch_optimizer = _choose("switch_optimizer", switch_optimizer, SWITCH_OPTIMIZER)
        self.rollback = rollback
        self.log = log
        self.events: list[str] = []
        self._group, self._world = _distributed(process_group)
        owned = {id(p) for layer in self.layers for p in layer.dendrite_parameters() + layer.candidate_parameters()}
        self._base = [p for p in model.parameters() if p.requires_grad and id(p) not in owned]
        # Candidates a loaded model brought along stay (frozen) for load_state_dict to resume their phase.
        self.phase = "neuron"
        self._stale, self._phase_epochs, self._best_val = 0, 0, math.inf
        self._current_val = math.inf
        self.states: dict[int, CorrelationState] = {}
        self._pending: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        # Installed dendrites in the order they joined the neuron optimizer: (layer, dendrite).
        most = max(layer.num_dendrites for layer in self.layers)
        self._groups = [(i, d) for d in range(most) for i, layer in enumerate(self.layers) if layer.num_dendrites > d]
        self._set_flags()
        self.neuron_optimizer = self._build_neuron_optimizer()
        self.dendrite_optimizer: torch.optim.Optimizer | None = None
        self.optimizer = self.neuron_optimizer
        self._snapshot: dict | None = None
        self._take_snapshot()

    # Parameters and optimizers.

    def _group_params(self, layer: int, d: int) -> list[nn.Parameter]:
        dendrite = self.layers[layer].dendrites[d]
        return (dendrite.input_maps() if self.installed == "trainable" else []) + [dendrite.w]

    def _build_neuron_optimizer(self) -> torch.optim.Optimizer:
        if self.switch_optimizer == "rebuild":
            return self.make_optimizer(self._base + [p for i, d in self._groups for p in self._group_params(i, d)])
        optimizer = self.make_optimizer(list(self._base))
        for i, d in self._groups:
            optimizer.add_param_group({"params": self._group_params(i, d)})
        return optimizer

    def _candidate_params(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.candidate_parameters()]

    def _owned_params(self) -> list[nn.Parameter]:
        """The parameters the trainer creates (DDP does not see them; the trainer reduces their gradients)."""
        return [p for layer in self.layers for p in layer.dendrite_parameters() + layer.candidate_parameters()]

    def _set_flags(self) -> None:
        """requires_grad for the current phase; a parameter that stops training loses its gradient."""
        neuron = self.phase == "neuron"
        flags = [(p, neuron) for p in self._base]
        for layer in self.layers:
            for dendrite in layer.dendrites:
                flags.append((dendrite.w, neuron))
                flags += [(p, neuron and self.installed == "trainable") for p in dendrite.input_maps()]
            flags += [(p, not neuron) for p in layer.candidate_parameters()]
        for p, trains in flags:
            p.requires_grad_(trains)
            if not trains:
                p.grad = None

    # The rollback snapshot.

    def _take_snapshot(self) -> None:
        """With ``rollback``: the current state (trainable parameters, buffers, optimizer) as the phase's best,
        at the validation loss known for it."""
        if not self.rollback or (self.phase == "dendrite" and self.objective == "correlation"):
            self._snapshot = None
            return
        self._snapshot = {
            "val": self._current_val,
            "params": {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad},
            "buffers": {n: b.detach().clone() for n, b in self.model.named_buffers()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    @torch.no_grad()
    def _roll_back(self) -> None:
        snap = self._snapshot
        if snap is None:
            return
        if snap["val"] < self._current_val:
            self._say(f"rolled back to the phase's best val loss {snap['val']:.4f}")
        for name, p in self.model.named_parameters():
            if name in snap["params"]:
                p.copy_(snap["params"][name])
        for name, b in self.model.named_buffers():
            b.copy_(snap["buffers"][name])
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        self._current_val = snap["val"]

    # Training.

    def _say(self, line: str) -> None:
        self.events.append(line)
        if self.log is not None:
            self.log(line)

    def step(self, loss: torch.Tensor) -> None:
        """Backward of the task loss, ``after_backward``, and one optimizer step of the current phase."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward()
        self.optimizer.step()

    def after_backward(self) -> None:
        """The phase's work between the backward and the optimizer step, for loops that do not use ``step``: in a
        correlation phase, fold the batch's statistics and give the candidates their gradient; under data
        parallelism, reduce the gradients of the parameters the trainer owns."""
        if self.phase == "dendrite" and self.objective == "correlation":
            self._correlation_step()
        if self._world > 1:
            self._reduce_owned_grads()

    def _collect(self, layer: DendriteLayer, values: torch.Tensor, errors: torch.Tensor) -> None:
        """Called by a layer's backward hook with V [P, C, N] and E [P, N] of this rank's tokens."""
        if self._world > 1:
            errors = errors / self._world
        self._pending.setdefault(self.layers.index(layer), []).append((values, errors))

    def _correlation_step(self) -> None:
        pending, self._pending = self._pending, {}
        inputs, batches = {}, []
        for i in sorted(self.states):
            entries = pending.get(i, [])
            state = self.states[i]
            if entries:
                values = torch.cat([v for v, _ in entries]).unsqueeze(0)
                errors = torch.cat([e for _, e in entries]).unsqueeze(0)
                inputs[i] = (values, errors)
                batches.append(batch_moments(values.detach(), errors))
            else:
                batches.append(Moments.empty(*state.shape, state.best.device))
        if self._world > 1:
            batches = merge_across_ranks(batches, self._group)
        tensors, grads = [], []
        for i, batch in zip(sorted(self.states), batches, strict=True):
            if batch.count.item() == 0:
                continue
            state = self.states[i]
            state.fold(batch)
            if i in inputs:
                values, errors = inputs[i]
                tensors.append(values)
                grads.append(state.candidate_grad(values.detach(), errors, batch))
        if tensors:
            torch.autograd.backward(tensors, grads)

    @torch.no_grad()
    def _reduce_owned_grads(self) -> None:
        params = [p for p in self._owned_params() if p.requires_grad]
        if not params:
            return
        has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
        flat = torch.cat([has] + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat, group=self._group)
        # A correlation phase's candidate gradients are each rank's share of the global batch's: they add up.
        summed = self.phase == "dendrite" and self.objective == "correlation"
        grads = flat[len(params) :] if summed else flat[len(params) :] / self._world
        for p, any_rank, g in zip(params, flat[: len(params)], grads.split([p.numel() for p in params]), strict=True):
            if any_rank > 0:
                p.grad = g.view_as(p).clone()

    def _mean_over_ranks(self, value: float) -> float:
        if self._world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=next(self.model.parameters()).device)
        dist.all_reduce(t, group=self._group)
        return t.item() / self._world

    # Phases.

    def _new_state(self, layer: DendriteLayer) -> CorrelationState:
        return CorrelationState(1, layer.num_candidates, layer.out_features, mode=layer.mode, window=self.window,
                                beta=self.beta, tol=self.correlation_tol,
                                device=layer.candidate_parameters()[0].device)  # fmt: skip

    def start_dendrite_phase(self) -> None:
        """Freeze the model and grow fresh candidates in every layer that has room for a dendrite (called on
        plateaus, or on a schedule by the caller). With ``rollback`` the model first returns to its best state."""
        if self.rollback:
            self._roll_back()
        active = [i for i, layer in enumerate(self.layers) if layer.num_dendrites < self.max_dendrites]
        if not active:
            self._say(f"every layer has {self.max_dendrites} dendrites: the neuron phase goes on")
            return
        self.states = {}
        for i in active:
            layer = self.layers[i]
            layer.grow_candidates(self.objective)
            if self.objective == "correlation":
                layer.collector = self._collect
                self.states[i] = self._new_state(layer)
        self.phase, self._phase_epochs, self._stale, self._best_val = "dendrite", 0, 0, math.inf
        self._set_flags()
        self.dendrite_optimizer = self.make_optimizer(self._candidate_params())
        self.optimizer = self.dendrite_optimizer
        self._take_snapshot()
        what = (f"{self.layers[active[0]].num_candidates} candidates per neuron" if self.objective == "correlation"
                else "1 gradient-descent candidate per neuron")  # fmt: skip
        self._say(f"dendrite phase: training {what} in {len(active)} layers (base frozen)")

    def install_and_resume(self) -> None:
        """Install each growing layer's candidates (correlation: each neuron's best, output weight 0; GD: the
        trained one), drop all candidates and their optimizer, and resume the neuron phase."""
        if self.phase != "dendrite":
            raise RuntimeError("install_and_resume needs a dendrite phase: call start_dendrite_phase first")
        if self.rollback and self.objective == "gd":
            self._roll_back()
        scores = []
        for i, layer in enumerate(self.layers):
            layer.collector = None
            if layer.objective is None:
                continue
            state = self.states.get(i)
            layer.install(None if state is None else state.best_candidates()[0])
            self._groups.append((i, layer.num_dendrites - 1))
            if self.switch_optimizer == "keep":
                self.neuron_optimizer.add_param_group({"params": self._group_params(i, layer.num_dendrites - 1)})
            if state is not None:
                scores.append(state.best.mean().item())
        self.phase, self._phase_epochs, self._stale, self._best_val = "neuron", 0, 0, math.inf
        self.states, self._pending = {}, {}
        self.dendrite_optimizer = None
        self._set_flags()
        if self.switch_optimizer == "rebuild":
            self.neuron_optimizer = self._build_neuron_optimizer()
        self.optimizer = self.neuron_optimizer
        self._take_snapshot()
        counts = [layer.num_dendrites for layer in self.layers]
        score = (f"mean best |{self.layers[0].mode}| {sum(scores) / len(scores):.4f}" if scores
                 else "gradient-descent candidates")  # fmt: skip
        self._say(f"installed dendrites: per layer {counts}; {score}; neuron phase resumes")

    def end_epoch(self, val_loss: float) -> None:
        """Advance the phase logic after an epoch with validation loss ``val_loss`` (averaged over ranks)."""
        val = self._mean_over_ranks(float(val_loss))
        self._phase_epochs += 1
        if self.phase == "dendrite" and self.objective == "correlation":
            improved = [bool(state.close_epoch().any()) for state in self.states.values()]  # every layer closes
            self._stale = 0 if any(improved) else self._stale + 1
            if self._stale >= self.patience or self._phase_epochs >= self.max_dendrite_epochs:
                self.install_and_resume()
            return
        self._current_val = val
        if self._snapshot is not None and val < self._snapshot["val"]:
            self._take_snapshot()
        if val < self._best_val * (1 - self.min_improvement):
            self._best_val, self._stale = val, 0
        else:
            self._stale += 1
        if self.phase == "dendrite":
            if self._stale >= self.patience or self._phase_epochs >= self.max_dendrite_epochs:
                self.install_and_resume()
            return
        full = all(layer.num_dendrites >= self.max_dendrites for layer in self.layers)
        if self._stale >= self.patience and not full:
            self._say(f"neuron phase plateaued at val loss {self._best_val:.4f} after {self._phase_epochs} epochs")
            self.start_dendrite_phase()

    # Distributed.

    def wrap_ddp(self, **kwargs) -> DistributedDataParallel:
        """``DistributedDataParallel(model, find_unused_parameters=True, **kwargs)`` for the cycle: the dendrite
        phase freezes the model (so DDP must expect unused parameters), and the dendrites' parameters, which come
        and go with the phases, are left out of it (built while they do not require gradients): the trainer
        reduces their gradients itself in ``after_backward``."""
        owned = self._owned_params()
        flags = [p.requires_grad for p in owned]
        for p in owned:
            p.requires_grad_(False)
        try:
            kwargs.setdefault("find_unused_parameters", True)
            kwargs.setdefault("process_group", self._group)
            return DistributedDataParallel(self.model, **kwargs)
        finally:
            for p, flag in zip(owned, flags, strict=True):
                p.requires_grad_(flag)

    # Checkpoints.

    def _options(self) -> dict:
        return {"objective": self.objective, "installed": self.installed, "switch_optimizer": self.switch_optimizer,
                "rollback": self.rollback}  # fmt: skip

    def state_dict(self) -> dict:
        """The cycle's state: phase, counters, running statistics, optimizer states, the rollback snapshot, events
        and the RNG states (torch CPU, and CUDA when initialised). Tensors are references, as in
        ``Module.state_dict``: serialise it (``torch.save``) to keep it. The model's parameters (candidates
        included) are in ``model.state_dict()``."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "options": self._options(),
            "phase": self.phase,
            "counters": {
                "stale": self._stale,
                "phase_epochs": self._phase_epochs,
                "best_val": self._best_val,
                "current_val": self._current_val,
            },  # fmt: skip
            "events": list(self.events),
            "groups": [list(g) for g in self._groups],
            "states": {i: state.state_dict() for i, state in self.states.items()},
            "neuron_optimizer": self.neuron_optimizer.state_dict(),
            "dendrite_optimizer": None if self.dendrite_optimizer is None else self.dendrite_optimizer.state_dict(),
            "snapshot": self._snapshot,
            "rng": rng,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the cycle saved by ``state_dict``. Load the model first (``add_dendrites`` on a fresh model,
        then ``model.load_state_dict``: the layers grow to the saved dendrites and candidates), build the trainer
        with the same options, then call this last, just before training goes on: it restores the RNG states."""
        if state["options"] != self._options():
            raise ValueError(f"the saved trainer had options {state['options']}, this one {self._options()}")
        saved_phase = state["phase"]
        growing = [i for i, layer in enumerate(self.layers) if layer.objective is not None]
        if (saved_phase == "dendrite") != bool(growing):
            raise ValueError(f"the saved trainer is in the {saved_phase} phase but the model's layers "
                             f"{'have' if growing else 'have no'} candidates: load the saved model first")  # fmt: skip
        self.phase = saved_phase
        counters = state["counters"]
        self._stale, self._phase_epochs = counters["stale"], counters["phase_epochs"]
        self._best_val, self._current_val = counters["best_val"], counters["current_val"]
        self.events = list(state["events"])
        self._pending = {}
        self._set_flags()
        self._groups = [tuple(g) for g in state["groups"]]
        self.neuron_optimizer = self._build_neuron_optimizer()
        self.neuron_optimizer.load_state_dict(state["neuron_optimizer"])
        self.states, self.dendrite_optimizer = {}, None
        self.optimizer = self.neuron_optimizer
        if self.phase == "dendrite":
            for i, saved in state["states"].items():
                layer = self.layers[i]
                layer.collector = self._collect
                self.states[i] = self._new_state(layer)
                self.states[i].load_state_dict(saved)
            self.dendrite_optimizer = self.make_optimizer(self._candidate_params())
            self.dendrite_optimizer.load_state_dict(state["dendrite_optimizer"])
            self.optimizer = self.dendrite_optimizer
        self._snapshot = copy.deepcopy(state["snapshot"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def _distributed(process_group: dist.ProcessGroup | None) -> tuple[dist.ProcessGroup | None, int]:
    """(group, world size): world 1 without an initialised ``torch.distributed``."""
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None, 1
    return process_group, dist.get_world_size(process_group)
