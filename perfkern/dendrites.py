"""Dendrites trained by error correlation (DESIGN §3.5): Perforated Backpropagation in the manner of
Cascade-Correlation (Fahlman & Lebiere 1990).

A wrapped layer computes ``out = base(x) + Σ_d w_d ⊙ σ(dendrite_d(x))``. Training alternates two phases:

- **neuron phase**: the base and the installed dendrites' output weights w_d train on the task loss;
- **dendrite phase**: the base is frozen; C candidate dendrites per neuron see the layer's input (detached, so no
  gradient reaches the layers below) and train to maximise |corr(candidate output, neuron error)|, the neuron
  error E = ∂L/∂out being captured in the backward of the task loss. Running statistics track each candidate's
  correlation over the whole phase; when they stop improving, each neuron installs its best candidate (with
  w = 0, so the function does not jump) and the neuron phase resumes.

``CorrelationState`` holds the running statistics; ``DendriteLayer`` wraps any linear-like module (``nn.Linear``,
``SparseLoRALinear``, PEFT LoRA layers); ``DendriteTrainer`` switches phases on plateaus and reports what it did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from perfkern.ops import dendrite as _ops
from perfkern.reference import dendrite as _ref

__all__ = ["CorrelationState", "DendriteLayer", "DendriteTrainer", "add_dendrites"]


class CorrelationState:
    """Running Cascade-Correlation statistics of C candidates for the N neurons of L layers, updated in place.

    The score of each (layer, candidate, neuron) is a cumulative average over the first ``window`` batches,
    then an exponential moving average with factor ``beta``. ``best`` [L, N] is the best |score| any candidate of
    a neuron has reached, and ``improved`` [L, N] says whether the last update raised it (by more than ``tol``
    relative). No activation is kept between batches."""

    def __init__(
        self,
        layers: int,
        candidates: int,
        neurons: int,
        mode: str = "pearson",
        window: int = 20,
        beta: float = 0.99,
        tol: float = 1e-3,
        device: torch.device | str | None = None,
    ) -> None:
        if mode not in _ref.MODES:
            raise ValueError(f"mode must be 'cc' or 'pearson', got {mode!r}")
        if window < 1 or not 0.0 <= beta < 1.0:
            raise ValueError(f"window must be >= 1 and beta in [0, 1), got window={window}, beta={beta}")
        self.mode, self.window, self.beta, self.tol = mode, window, beta, tol
        self.running = torch.zeros(layers, candidates, neurons, device=device)
        self.best = torch.zeros(layers, neurons, device=device)
        self.improved = torch.zeros(layers, neurons, dtype=torch.bool, device=device)
        self.batches = 0

    @torch.no_grad()
    def update(self, values: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        """Fold one batch (values [L, P, C, N], errors [L, P, N]) into the running scores and return the candidate
        gradient ∂(−Σ|running score|)/∂values for this batch (same shape as values), for ``values.backward``.

        The gradient uses the sign of the running score, as Cascade-Correlation does (σ_o of the paper), and the
        batch's statistics for the rest; statistics and gradient cost one pass each over V and E."""
        v_mean, e_mean, cov, v_var, e_var = _ops.dendrite_stats(values, errors)
        batch_score = _ref.score(cov, v_var, e_var, self.mode)
        self.batches += 1
        weight = 1.0 / self.batches if self.batches <= self.window else 1.0 - self.beta
        self.running.add_(torch.nan_to_num(batch_score) - self.running, alpha=weight)
        candidate_best = self.running.abs().amax(dim=1)
        self.improved = candidate_best > self.best * (1 + self.tol)
        torch.maximum(self.best, candidate_best, out=self.best)
        alpha, beta = _ref.grad_coefficients(-torch.sign(self.running), batch_score, v_var, e_var,
                                             values.shape[1], self.mode)  # fmt: skip
        # Candidates share input maps across neurons: one neuron's NaN error must not reach them.
        return torch.nan_to_num_(_ops.dendrite_grad(values, errors, v_mean, e_mean, alpha, beta), 0.0, 0.0, 0.0)

    def best_candidates(self) -> torch.Tensor:
        """[L, N]: for each neuron, the candidate with the largest |running score|."""
        return self.running.abs().argmax(dim=1)


class DendriteLayer(nn.Module):
    """``out = base(x) + Σ_d w_d ⊙ σ(x·A_dᵀ·B_dᵀ)`` around any module with ``in_features``/``out_features``.

    Args:
        base: the neuron layer (``nn.Linear``, ``SparseLoRALinear``, a PEFT LoRA layer, ...).
        candidates: C, candidate dendrites per neuron during a dendrite phase.
        rank: rank of each candidate's map x → R^N (None: full rank, a [N, K] matrix per candidate).
        mode: correlation the candidates maximise, ``"pearson"`` or ``"cc"`` (covariance, as the paper).
        init_scale: standard deviation of the candidates' initial pre-activations for unit inputs: small, so their
            outputs start near σ(0) = 0.5 with a small spread, as in Cascade-Correlation.
    """

    def __init__(
        self,
        base: nn.Module,
        candidates: int = 4,
        rank: int | None = 4,
        mode: str = "pearson",
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        for attr in ("in_features", "out_features"):
            if not isinstance(getattr(base, attr, None), int):
                raise TypeError(f"base must be linear-like with an integer {attr}, got {type(base).__name__}")
        if candidates < 1 or (rank is not None and rank < 1):
            raise ValueError(f"candidates and rank must be >= 1, got candidates={candidates}, rank={rank}")
        if mode not in _ref.MODES:
            raise ValueError(f"mode must be 'cc' or 'pearson', got {mode!r}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.num_candidates, self.rank, self.mode, self.init_scale = candidates, rank, mode, init_scale
        self.dendrite_a = nn.ParameterList()
        self.dendrite_b = nn.ParameterList()
        self.dendrite_w = nn.ParameterList()
        ref_param = next(base.parameters())
        factory = {"device": ref_param.device, "dtype": torch.float32}
        k, n, c = self.in_features, self.out_features, candidates
        if rank is None:
            self.cand_w = nn.Parameter(torch.empty(c, n, k, **factory))
            self.register_parameter("cand_a", None)
            self.register_parameter("cand_b", None)
        else:
            self.cand_a = nn.Parameter(torch.empty(c, rank, k, **factory))
            self.cand_b = nn.Parameter(torch.empty(c, n, rank, **factory))
            self.register_parameter("cand_w", None)
        self.reset_candidates()
        self.tracking = False
        self._pending: torch.Tensor | None = None
        self.state: CorrelationState | None = None
        self.index: int = 0

    @property
    def num_dendrites(self) -> int:
        return len(self.dendrite_w)

    def candidate_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.cand_a, self.cand_b, self.cand_w) if p is not None]

    @torch.no_grad()
    def reset_candidates(self) -> None:
        k = self.in_features
        if self.cand_w is not None:
            self.cand_w.normal_(std=self.init_scale / math.sqrt(k))
        else:
            self.cand_a.normal_(std=1 / math.sqrt(k))
            self.cand_b.normal_(std=self.init_scale / math.sqrt(self.rank))

    def _candidate_values(self, x2: torch.Tensor) -> torch.Tensor:
        """σ(candidate pre-activations) [P, C, N] for tokens x2 [P, K]."""
        x2 = x2.float()
        if self.cand_w is not None:
            pre = torch.einsum("pk,cnk->pcn", x2, self.cand_w)
        else:
            pre = torch.einsum("pcr,cnr->pcn", torch.einsum("pk,crk->pcr", x2, self.cand_a), self.cand_b)
        return torch.sigmoid(pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for a, b, w in zip(self.dendrite_a, self.dendrite_b, self.dendrite_w, strict=True):
            out = out + (w * torch.sigmoid((x.float() @ a.t()) @ b.t())).to(out.dtype)
        if self.tracking and torch.is_grad_enabled():
            # Candidates see the input but send no gradient into it; E arrives through the hook on out.
            values = self._candidate_values(x.detach().reshape(-1, self.in_features))
            if not out.requires_grad:
                out = out.detach().requires_grad_(True)
            self._pending = values
            out.register_hook(self._on_error)
        return out

    def _on_error(self, grad: torch.Tensor) -> None:
        values, self._pending = self._pending, None
        errors = grad.detach().reshape(-1, self.out_features).to(values.dtype)
        d_values = self.state.update_layer(self.index, values.detach(), errors)
        values.backward(d_values)

    @torch.no_grad()
    def install_best(self, best: torch.Tensor) -> None:
        """Install, for each neuron n, its candidate ``best[n]`` as a new dendrite with output weight 0."""
        n, k = self.out_features, self.in_features
        rows = torch.arange(n, device=best.device)
        if self.cand_w is not None:
            a = self.cand_w[best, rows]  # [N, K]: dendrite pre-activation n = a[n]·x
            b = torch.eye(n, device=a.device)
        else:
            used = torch.unique(best)
            a = self.cand_a[used].reshape(-1, k)  # [U·R, K]
            b = torch.zeros(n, len(used) * self.rank, device=a.device)
            slot = torch.searchsorted(used, best)
            for j in range(self.rank):
                b[rows, slot * self.rank + j] = self.cand_b[best, rows, j]
        # As in Cascade-Correlation, an installed dendrite's input map is frozen; only its output weight trains.
        self.dendrite_a.append(nn.Parameter(a.clone(), requires_grad=False))
        self.dendrite_b.append(nn.Parameter(b, requires_grad=False))
        self.dendrite_w.append(nn.Parameter(torch.zeros(n, device=a.device)))
        self.reset_candidates()

    def extra_repr(self) -> str:
        rank = "full" if self.rank is None else self.rank
        return f"dendrites={self.num_dendrites}, candidates={self.num_candidates}, rank={rank}, mode={self.mode}"


class _LayerGroupState:
    """One CorrelationState per wrapped layer, updated from each layer's backward hook."""

    def __init__(self, layers: list[DendriteLayer], **kwargs) -> None:
        self.states = [
            CorrelationState(1, layer.num_candidates, layer.out_features, mode=layer.mode,
                             device=next(layer.parameters()).device, **kwargs)
            for layer in layers
        ]  # fmt: skip

    def update_layer(self, index: int, values: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        return self.states[index].update(values.unsqueeze(0), errors.unsqueeze(0)).squeeze(0)


def add_dendrites(
    model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None, **kwargs
) -> list[DendriteLayer]:
    """Wrap, in place, every linear-like submodule of ``model`` that ``include(name, module)`` accepts (default:
    every ``nn.Linear``) in a ``DendriteLayer(module, **kwargs)``. Returns the new layers."""
    if include is None:

        def include(name, module):
            return isinstance(module, nn.Linear)

    targets = [(name, m) for name, m in model.named_modules() if name and include(name, m)]
    targets = [(name, m) for name, m in targets if not any(name.startswith(t + ".") for t, _ in targets if t != name)]
    layers = []
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = DendriteLayer(module, **kwargs)
        setattr(parent, child, layer)
        layers.append(layer)
    return layers


class DendriteTrainer:
    """Alternates neuron and dendrite phases on validation plateaus and says what it does.

    Use: ``loss.backward()`` is done by ``step(loss)``; call ``end_epoch(val_loss)`` after each epoch. In the
    neuron phase the optimizer built by ``make_optimizer`` over the model's trainable parameters and the
    dendrites' output weights steps; when the validation loss has not improved by a fraction ``min_improvement``
    for ``patience`` epochs, the
    dendrite phase starts: the base is frozen and the candidates train on the correlation objective. When no
    neuron's best candidate score has improved for ``patience`` epochs (or ``max_dendrite_epochs`` pass), every
    layer installs its best candidates and the neuron phase resumes. ``max_dendrites`` bounds the dendrites per
    layer. ``log`` receives one line per event; ``events`` keeps them."""

    def __init__(
        self,
        model: nn.Module,
        layers: Iterable[DendriteLayer],
        make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        patience: int = 2,
        min_improvement: float = 1e-2,
        max_dendrite_epochs: int = 5,
        max_dendrites: int = 4,
        window: int = 20,
        beta: float = 0.99,
        log: Callable[[str], None] | None = print,
    ) -> None:
        self.model, self.layers = model, list(layers)
        if not self.layers:
            raise ValueError("DendriteTrainer needs at least one DendriteLayer")
        self.make_optimizer = make_optimizer
        self.patience, self.max_dendrite_epochs, self.max_dendrites = patience, max_dendrite_epochs, max_dendrites
        self.min_improvement = min_improvement
        self.window, self.beta = window, beta
        self.log = log
        self.events: list[str] = []
        self.phase = "neuron"
        self._candidate_ids = {id(p) for layer in self.layers for p in layer.candidate_parameters()}
        self._trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in self._candidate_ids]
        for p in self._candidate_params():
            p.requires_grad_(False)
        # One neuron optimizer for the whole run (its state survives the dendrite phases); installed dendrites'
        # output weights join it as new parameter groups.
        self.neuron_optimizer = make_optimizer(self._trainable)
        self.optimizer = self.neuron_optimizer
        self._best_val = math.inf
        self._stale = 0
        self._phase_epochs = 0
        self.group: _LayerGroupState | None = None

    def _candidate_params(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.candidate_parameters()]

    def _output_weights(self) -> list[nn.Parameter]:
        return [w for layer in self.layers for w in layer.dendrite_w]

    def _say(self, line: str) -> None:
        self.events.append(line)
        if self.log is not None:
            self.log(line)

    def step(self, loss: torch.Tensor) -> None:
        """Backward of the task loss and one optimizer step of the current phase."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def start_dendrite_phase(self) -> None:
        """Freeze the base and train fresh candidates on the correlation objective (called on plateaus, or on a
        schedule by the caller)."""
        self.phase, self._phase_epochs, self._stale = "dendrite", 0, 0
        for p in self._trainable + self._output_weights():
            p.requires_grad_(False)
            p.grad = None
        self.group = _LayerGroupState(self.layers, window=self.window, beta=self.beta)
        for i, layer in enumerate(self.layers):
            layer.reset_candidates()
            layer.tracking, layer.state, layer.index = True, self.group, i
            for p in layer.candidate_parameters():
                p.requires_grad_(True)
        self.optimizer = self.make_optimizer(self._candidate_params())
        self._say(f"dendrite phase: training {self.layers[0].num_candidates} candidates per neuron "
                  f"in {len(self.layers)} layers (base frozen)")  # fmt: skip

    def install_and_resume(self) -> None:
        """Install each layer's best candidates (output weight 0) and resume the neuron phase."""
        counts, scores = [], []
        for layer, state in zip(self.layers, self.group.states, strict=True):
            layer.tracking, layer.state = False, None
            if layer.num_dendrites < self.max_dendrites:
                layer.install_best(state.best_candidates()[0])
                self.neuron_optimizer.add_param_group({"params": [layer.dendrite_w[-1]]})
            counts.append(layer.num_dendrites)
            scores.append(state.best.mean().item())
            for p in layer.candidate_parameters():
                p.requires_grad_(False)
                p.grad = None
        for p in self._trainable + self._output_weights():
            p.requires_grad_(True)
        self.phase, self._phase_epochs, self._stale, self._best_val = "neuron", 0, 0, math.inf
        self.group = None
        self.optimizer = self.neuron_optimizer
        mean_score = sum(scores) / len(scores)
        self._say(f"installed dendrites: per layer {counts}; mean best |{self.layers[0].mode}| {mean_score:.4f}; "
                  "neuron phase resumes")  # fmt: skip

    def end_epoch(self, val_loss: float) -> None:
        """Advance the phase logic after an epoch with validation loss ``val_loss``."""
        self._phase_epochs += 1
        if self.phase == "neuron":
            if val_loss < self._best_val * (1 - self.min_improvement):
                self._best_val, self._stale = val_loss, 0
            else:
                self._stale += 1
            full = all(layer.num_dendrites >= self.max_dendrites for layer in self.layers)
            if self._stale >= self.patience and not full:
                self._say(f"neuron phase plateaued at val loss {self._best_val:.4f} after {self._phase_epochs} epochs")
                self.start_dendrite_phase()
            return
        improved = any(bool(state.improved.any()) for state in self.group.states)
        self._stale = 0 if improved else self._stale + 1
        if self._stale >= self.patience or self._phase_epochs >= self.max_dendrite_epochs:
            self.install_and_resume()
