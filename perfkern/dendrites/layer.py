"""``DendriteLayer``: a linear-like module with dendrites, and the candidates that become them (DESIGN §3.5).

For tokens x [P, K] (x of any shape [..., K] is flattened), installed dendrites d = 0, 1, ... compute, per neuron,

    h_d = σ(pre_d(x) + Σ_{j<d} u_d[j] ⊙ h_j)        (the u term only with ``cascade=True``)
    out = base(x) + Σ_d w_d ⊙ h_d

with pre_d(x)[n] = (x·A_d[i_d(n)]ᵀ)·B_d[n] (low rank: A_d [U, R, K] the input maps of the U candidates some neuron
chose, B_d [N, R], i_d [N] which of them neuron n uses) or x·A_d[n] (full rank: A_d [N, K]); w_d [N]; u_d [d, N].

During a dendrite phase the layer also holds C candidates per neuron, computed on the input detached (no gradient
reaches the layers below through them) and, with ``cascade``, on the installed dendrites' outputs h_j detached:

    V[p, c, n] = σ((x_p·A_cᵀ)·B_c[n] + Σ_j u_c[j, n]·h_j[p, n])      A [C, R, K], B [C, N, R], u [C, D, N]

(full rank: x_p·W_c[n], W [C, N, K]). With the correlation objective V stays out of the output: the backward hook
on ``out`` hands V and the neuron error E = ∂L/∂out to ``collector``. With the gradient-descent objective (a
baseline, as "GD dendrites") there is one candidate and it joins the output, ``out += w_cand ⊙ V[:, 0]``, w_cand
[N] starting at 0. ``install`` turns the chosen candidates into a dendrite and drops every candidate parameter.

``state_dict`` holds the dendrites under ``dendrites.<d>.{a,b,index,w,u}`` and the candidates, while they exist,
under ``cand_{a,b,w,u,out}``; loading a state dict grows a freshly wrapped layer to the saved dendrites and gives
it the saved candidates, so ``add_dendrites(model, ...)`` followed by ``model.load_state_dict(saved)`` restores a
model with its dendrites.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from perfkern.reference import dendrite as _ref

__all__ = ["DendriteLayer", "add_dendrites"]

OBJECTIVES = ("correlation", "gd")
_CANDIDATES = ("cand_a", "cand_b", "cand_w", "cand_u", "cand_out")


class _Dendrite(nn.Module):
    """One installed dendrite for each of the N neurons (module docstring): a [U, R, K] or [N, K], b [N, R] or
    None, index [N] (a buffer) or None, w [N], u [d, N] or None."""

    def __init__(
        self,
        a: torch.Tensor,
        b: torch.Tensor | None,
        index: torch.Tensor | None,
        w: torch.Tensor,
        u: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.a = nn.Parameter(a, requires_grad=False)
        self.b = None if b is None else nn.Parameter(b, requires_grad=False)
        self.register_buffer("index", index)
        self.w = nn.Parameter(w)
        self.u = None if u is None else nn.Parameter(u, requires_grad=False)

    def input_maps(self) -> list[nn.Parameter]:
        """The parameters of pre_d and of the cascade term (frozen in Cascade-Correlation): a, b, u."""
        return [p for p in (self.a, self.b, self.u) if p is not None]

    def pre(self, x2: torch.Tensor) -> torch.Tensor:
        """pre_d(x) [P, N] for x2 [P, K] fp32."""
        if self.b is None:
            return x2 @ self.a.t()
        used, rank, k = self.a.shape
        n = self.b.shape[0]
        # B_d scattered into the [N, U·R] matrix it stands for: one GEMM, and only N·R stored parameters.
        slots = self.index.view(n, 1, 1).expand(n, 1, rank)
        b_full = self.b.new_zeros(n, used, rank).scatter(1, slots, self.b.unsqueeze(1)).reshape(n, used * rank)
        return (x2 @ self.a.reshape(used * rank, k).t()) @ b_full.t()


class DendriteLayer(nn.Module):
    """``out = base(x) + Σ_d w_d ⊙ h_d`` around any module with ``in_features``/``out_features`` (module docstring).

    Args:
        base: the neuron layer (``nn.Linear``, ``SparseLoRALinear``, a PEFT LoRA layer, ...).
        candidates: C, candidate dendrites per neuron in a correlation dendrite phase.
        rank: rank R of each candidate's map x → R^N (None: full rank, a [N, K] matrix per candidate).
        mode: correlation the candidates maximise, ``"pearson"`` or ``"cc"`` (covariance, as the paper).
        init_scale: standard deviation of the candidates' initial pre-activations for unit inputs: small, so their
            outputs start near σ(0) = 0.5 with a small spread, as in Cascade-Correlation.
        cascade: each new dendrite (and candidate) also takes the outputs of the neuron's earlier dendrites as
            inputs, one weight each (Cascade-Correlation's cascade, per neuron).
    """

    def __init__(
        self,
        base: nn.Module,
        candidates: int = 4,
        rank: int | None = 2,
        mode: str = "pearson",
        init_scale: float = 0.1,
        cascade: bool = False,
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
        self.cascade = cascade
        self.dendrites = nn.ModuleList()
        for name in _CANDIDATES:
            self.register_parameter(name, None)
        self.objective: str | None = None
        self.collector: Callable[[DendriteLayer, torch.Tensor, torch.Tensor], None] | None = None

    @property
    def _device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def num_dendrites(self) -> int:
        return len(self.dendrites)

    def candidate_parameters(self) -> list[nn.Parameter]:
        """The candidates' parameters (empty outside a dendrite phase)."""
        return [p for p in (getattr(self, name) for name in _CANDIDATES) if p is not None]

    def dendrite_parameters(self, input_maps: bool = True) -> list[nn.Parameter]:
        """The installed dendrites' parameters in install order: per dendrite its input maps (a, b, u; only with
        ``input_maps``) then its output weight w."""
        return [p for d in self.dendrites for p in (d.input_maps() if input_maps else []) + [d.w]]

    # Candidates.

    @torch.no_grad()
    def grow_candidates(self, objective: str = "correlation") -> None:
        """Fresh candidates for a dendrite phase: C of them for ``"correlation"``, one joining the output with
        weight 0 for ``"gd"``. Initialisation: A ~ N(0, 1/K), B ~ N(0, init_scale²/R) (full rank: W ~
        N(0, init_scale²/K)), u ~ N(0, init_scale²/d)."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.drop_candidates()
        c = self.num_candidates if objective == "correlation" else 1
        k, n, d = self.in_features, self.out_features, self.num_dendrites
        factory = {"device": self._device, "dtype": torch.float32}
        if self.rank is None:
            self.cand_w = nn.Parameter(torch.randn(c, n, k, **factory) * (self.init_scale / math.sqrt(k)))
        else:
            self.cand_a = nn.Parameter(torch.randn(c, self.rank, k, **factory) / math.sqrt(k))
            self.cand_b = nn.Parameter(
                torch.randn(c, n, self.rank, **factory) * (self.init_scale / math.sqrt(self.rank))
            )
        if self.cascade and d > 0:
            self.cand_u = nn.Parameter(torch.randn(c, d, n, **factory) * (self.init_scale / math.sqrt(d)))
        if objective == "gd":
            self.cand_out = nn.Parameter(torch.zeros(n, **factory))
        self.objective = objective

    def drop_candidates(self) -> None:
        """Remove every candidate parameter (from the module, its ``parameters()`` and its ``state_dict``)."""
        for name in _CANDIDATES:
            setattr(self, name, None)
        self.objective = None

    def _candidate_values(self, x2: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        """V [P, C, N] for tokens x2 [P, K] fp32 and the installed dendrites' outputs hs (each [P, N])."""
        if self.cand_w is not None:
            pre = torch.einsum("pk,cnk->pcn", x2, self.cand_w)
        else:
            pre = torch.einsum("pcr,cnr->pcn", torch.einsum("pk,crk->pcr", x2, self.cand_a), self.cand_b)
        if self.cand_u is not None:
            pre = pre + torch.einsum("pdn,cdn->pcn", torch.stack(hs, 1), self.cand_u)
        return torch.sigmoid(pre)

    @torch.no_grad()
    def install(self, best: torch.Tensor | None = None) -> None:
        """Turn candidates into a dendrite, then drop all candidates. Correlation: neuron n installs candidate
        ``best[n]`` (best [N] long) with output weight 0, so the function does not jump. GD: the one candidate is
        installed with its trained output weight (it was already part of the output)."""
        if self.objective is None:
            raise RuntimeError("install needs candidates: call grow_candidates first")
        n = self.out_features
        rows = torch.arange(n, device=self._device)
        if self.objective == "gd":
            best, w = torch.zeros(n, dtype=torch.long, device=self._device), self.cand_out.detach().clone()
        else:
            w = torch.zeros(n, device=self._device)
        best = best.to(self._device)
        b = index = u = None
        if self.cand_w is not None:
            a = self.cand_w[best, rows]  # [N, K]: pre-activation n = a[n]·x
        else:
            used = torch.unique(best)
            a = self.cand_a[used].clone()  # [U, R, K]
            b = self.cand_b[best, rows]  # [N, R]
            index = torch.searchsorted(used, best)
        if self.cand_u is not None:
            u = self.cand_u[best, :, rows].t().contiguous()  # [d, N]
        self.dendrites.append(_Dendrite(a, b, index, w, u))
        self.drop_candidates()

    # Forward.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.dendrites and self.objective is None:
            return out
        x2 = x.reshape(-1, self.in_features).float()
        extra = None
        hs: list[torch.Tensor] = []
        for d in self.dendrites:
            pre = d.pre(x2)
            if d.u is not None:
                pre = pre + (d.u.unsqueeze(1) * torch.stack(hs, 0)).sum(0)
            hs.append(torch.sigmoid(pre))
            extra = d.w * hs[-1] if extra is None else extra + d.w * hs[-1]
        values = None
        if self.objective == "gd" or (self.objective == "correlation" and torch.is_grad_enabled()):
            # Candidates see the input (and the dendrites) but send no gradient into them.
            values = self._candidate_values(x2.detach(), [h.detach() for h in hs])
        if self.objective == "gd":
            term = self.cand_out * values[:, 0]
            extra = term if extra is None else extra + term
        if extra is not None:
            out = out + extra.reshape(out.shape).to(out.dtype)
        if self.objective == "correlation" and values is not None:
            if not out.requires_grad:
                out = out.detach().requires_grad_(True)
            out.register_hook(lambda grad, v=values: self._on_error(v, grad))
        return out

    def _on_error(self, values: torch.Tensor, grad: torch.Tensor) -> None:
        if self.collector is None:
            raise RuntimeError("a DendriteLayer in a correlation phase needs a collector (DendriteTrainer sets it)")
        self.collector(self, values, grad.detach().reshape(-1, self.out_features).float())

    # Loading.

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Before loading, grow to the saved number of dendrites (shapes from the saved tensors) and take the
        saved candidates (or drop ours if none were saved), so that the state dict's structure is restored."""
        count = self.num_dendrites
        while f"{prefix}dendrites.{count}.w" in state_dict:
            count += 1
        for d in range(self.num_dendrites, count):
            saved = {name: state_dict.get(f"{prefix}dendrites.{d}.{name}") for name in ("a", "b", "index", "w", "u")}
            made = {name: None if t is None else torch.zeros(t.shape, dtype=t.dtype, device=self._device)
                    for name, t in saved.items()}  # fmt: skip
            self.dendrites.append(_Dendrite(**made))
        saved_candidates = {name: state_dict.get(prefix + name) for name in _CANDIDATES}
        if any(t is not None for t in saved_candidates.values()):
            for name, t in saved_candidates.items():
                param = None if t is None else nn.Parameter(torch.zeros(t.shape, device=self._device))
                setattr(self, name, param)
            self.objective = "gd" if saved_candidates["cand_out"] is not None else "correlation"
        else:
            self.drop_candidates()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        rank = "full" if self.rank is None else self.rank
        return (f"dendrites={self.num_dendrites}, candidates={self.num_candidates}, rank={rank}, mode={self.mode}, "
                f"cascade={self.cascade}")  # fmt: skip


def add_dendrites(
    model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None, **kwargs
) -> list[DendriteLayer]:
    """Wrap, in place, every linear-like submodule of ``model`` that ``include(name, module)`` accepts (default:
    every ``nn.Linear``) in a ``DendriteLayer(module, **kwargs)``. Returns the new layers, in module order.

    To restore a saved model with its dendrites, wrap a fresh model the same way and ``load_state_dict``: each
    layer grows to the saved dendrites."""
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
