"""Running Cascade-Correlation statistics of candidate dendrites (DESIGN §3.5), and their reduction across ranks.

Everything here is built from the sufficient statistics of one batch of P tokens, per (layer l, candidate c,
neuron n), for candidate outputs V [L, P, C, N] and neuron errors E [L, P, N] (``Moments``):

    count = P
    v_mean = mean_p V          e_mean = mean_p E
    v_var  = mean_p (V − v_mean)²          e_var = mean_p (E − e_mean)²          cov = mean_p (V − v_mean)(E − e_mean)

computed in one stable pass by ``perfkern::dendrite_stats`` (each program shifts the data by its first row and
merges chunk-centred sums, so candidates at σ(0) = 0.5 with a tiny spread are exact to fp32 rounding). Two sets
combine without their tokens by ``perfkern.reference.dendrite.merge`` with a weight f for the second set:

    δ = mean_b − mean_a        mean = mean_a + f·δ        var = (1 − f)·var_a + f·var_b + f·(1 − f)·δ²
    cov = (1 − f)·cov_a + f·cov_b + f·(1 − f)·δ_v·δ_e

which for f = n_b / (n_a + n_b) is Chan, Golub & LeVeque's pairwise update (the co-moments M2 = n·var and
n·cov add, plus δ²·n_a·n_b/n), i.e. exactly the statistics of the union.

``CorrelationState`` keeps two such populations per layer:

- ``running``: for the first ``window`` batches f = P / (n + P), the cumulative statistics of every token so far;
  afterwards f = 1 − β, an exponential moving average with factor β. Its score (``score``) picks the candidate
  to install and signs the candidate gradient, as σ_o does in Cascade-Correlation.
- ``epoch``: always cumulative, reset by ``close_epoch``, which compares each neuron's best epoch score with the
  best of earlier epochs: the plateau test of a dendrite phase sees the whole epoch, not its last batch.

score = cov (mode "cc") or cov / (σ_V σ_E) (mode "pearson", 0 where a deviation is 0). Under data parallelism
every rank holds the same state: each rank's batch statistics are gathered and merged in rank order with f =
P_r / (n + P_r) (``merge_across_ranks``), which gives the statistics of the global batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from perfkern.ops import dendrite as _ops
from perfkern.reference import dendrite as _ref

__all__ = ["CorrelationState", "Moments", "batch_moments", "merge_across_ranks"]


class Moments(NamedTuple):
    """Population statistics of V and E over ``count`` tokens (module docstring): count a 0-d float64 tensor;
    v_mean, cov, v_var [L, C, N]; e_mean, e_var [L, N]; fp32."""

    count: torch.Tensor
    v_mean: torch.Tensor
    e_mean: torch.Tensor
    cov: torch.Tensor
    v_var: torch.Tensor
    e_var: torch.Tensor

    @property
    def stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(v_mean, e_mean, cov, v_var, e_var), the order of ``perfkern::dendrite_stats``."""
        return self.v_mean, self.e_mean, self.cov, self.v_var, self.e_var

    @classmethod
    def empty(cls, layers: int, candidates: int, neurons: int, device: torch.device | str | None = None) -> Moments:
        """No tokens: count 0 and zero statistics (a merge with f = 1 replaces them exactly)."""
        per_candidate = torch.zeros(layers, candidates, neurons, device=device)
        per_neuron = torch.zeros(layers, neurons, device=device)
        return cls(torch.zeros((), dtype=torch.float64, device=device), per_candidate, per_neuron,
                   per_candidate.clone(), per_candidate.clone(), per_neuron.clone())  # fmt: skip


def batch_moments(values: torch.Tensor, errors: torch.Tensor) -> Moments:
    """The statistics of one batch: values [L, P, C, N], errors [L, P, N] (one float dtype)."""
    count = torch.tensor(float(values.shape[1]), dtype=torch.float64, device=values.device)
    return Moments(count, *_ops.dendrite_stats(values, errors))


def _fold(a: Moments, b: Moments, frac: torch.Tensor) -> Moments:
    """``merge(a, b, frac)`` with the counts added. Where b's statistics are not finite (a NaN or infinite error
    in that neuron), or b is empty, a's are kept, so one bad batch does not poison a neuron for the whole phase."""
    merged = _ref.merge(a.stats, b.stats, frac.float())
    empty = b.count == 0
    kept = [torch.where(torch.isfinite(m) & ~empty, m, old) for m, old in zip(merged, a.stats, strict=True)]
    return Moments(a.count + b.count, *kept)


def merge_across_ranks(batches: list[Moments], group: dist.ProcessGroup | None = None) -> list[Moments]:
    """The statistics of the global batch from every rank's ``batches`` (one ``Moments`` per layer, same shapes on
    every rank): one ``all_gather`` of all layers' statistics (float64, exact for the fp32 statistics and the
    counts), then, on every rank alike, a merge in rank order with f = P_r / (n + P_r). Every rank gets bit-identical
    results; they equal one process's statistics on the whole batch up to fp32 rounding."""
    world = dist.get_world_size(group)
    flat = torch.cat([torch.cat([m.count.reshape(1)] + [s.reshape(-1).double() for s in m.stats]) for m in batches])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat, group=group)
    out = []
    offset = 0
    for m in batches:
        sizes = [1] + [s.numel() for s in m.stats]
        total = None
        for rank_flat in gathered:
            parts = rank_flat[offset : offset + sum(sizes)].split(sizes)
            stats = [p.reshape(s.shape).to(s.dtype) for p, s in zip(parts[1:], m.stats, strict=True)]
            rank = Moments(parts[0].reshape(()), *stats)
            if total is None:
                total = rank
            else:
                total = _fold(total, rank, rank.count / (total.count + rank.count).clamp_min(1))
        offset += sum(sizes)
        out.append(total)
    return out


class CorrelationState:
    """Running Cascade-Correlation statistics of C candidates for the N neurons of L layers (module docstring).

    Attributes: ``running`` and ``epoch`` (``Moments``); ``best`` [L, N], the best epoch |score| any candidate of a
    neuron has reached in a closed epoch; ``improved`` [L, N], whether the last ``close_epoch`` raised it by more
    than ``tol`` (relative); ``batches``, the batches folded in. No activation is kept between batches.

    Args:
        layers, candidates, neurons: L, C, N.
        mode: ``"pearson"`` or ``"cc"`` (covariance).
        window: batches averaged cumulatively before the exponential average starts (≥ 1).
        beta: the exponential average's factor β in [0, 1): each later batch weighs 1 − β.
        tol: relative improvement of ``best`` that counts as progress in ``close_epoch``.
        device: where the statistics live.
    """

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
        self.shape = (layers, candidates, neurons)
        self.running = Moments.empty(layers, candidates, neurons, device)
        self.epoch = Moments.empty(layers, candidates, neurons, device)
        self.best = torch.zeros(layers, neurons, device=device)
        self.improved = torch.zeros(layers, neurons, dtype=torch.bool, device=device)
        self.batches = 0

    @property
    def score(self) -> torch.Tensor:
        """[L, C, N]: the running score of every candidate."""
        return _score(self.running, self.mode)

    def fold(self, batch: Moments) -> None:
        """Fold one batch's statistics into ``running`` (f = P / (n + P) for the first ``window`` batches, then
        1 − β) and into ``epoch`` (f = P / (n + P))."""
        self.batches += 1
        cumulative = batch.count / (self.running.count + batch.count).clamp_min(1)
        frac = cumulative if self.batches <= self.window else torch.full_like(batch.count, 1.0 - self.beta)
        self.running = _fold(self.running, batch, frac)
        self.epoch = _fold(self.epoch, batch, batch.count / (self.epoch.count + batch.count).clamp_min(1))

    def candidate_grad(self, values: torch.Tensor, errors: torch.Tensor, batch: Moments) -> torch.Tensor:
        """∂(−Σ_{c,n} |score|)/∂values for this batch's rows (values [L, P, C, N], errors [L, P, N]): the sign of
        the running score (σ_o of Cascade-Correlation) times the derivative of the batch's score, whose
        statistics ``batch`` may cover more rows than ``values`` (other ranks' too: then the gradients of all
        ranks add up to the global batch's). A NaN error stays out of it: candidates share their input maps."""
        batch_score = _score(batch, self.mode)
        alpha, beta = _ref.grad_coefficients(-torch.sign(self.score), batch_score, batch.v_var, batch.e_var,
                                             int(batch.count.item()), self.mode)  # fmt: skip
        grad = _ops.dendrite_grad(values, errors, batch.v_mean, batch.e_mean, alpha, beta)
        return torch.nan_to_num_(grad, 0.0, 0.0, 0.0)

    @torch.no_grad()
    def update(self, values: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        """One process's step: fold the batch (values [L, P, C, N], errors [L, P, N]) and return the candidate
        gradient ``candidate_grad`` (same shape as values), for ``values.backward``."""
        batch = batch_moments(values, errors)
        self.fold(batch)
        return self.candidate_grad(values, errors, batch)

    def close_epoch(self) -> torch.Tensor:
        """End an epoch: ``improved`` [L, N] = (best |epoch score| over candidates > ``best``·(1 + tol)), then
        ``best`` takes the maximum and ``epoch`` starts empty. Returns ``improved``. An epoch without batches
        improves nothing."""
        candidate_best = torch.nan_to_num(_score(self.epoch, self.mode)).abs().amax(dim=1)
        self.improved = (candidate_best > self.best * (1 + self.tol)) & (self.epoch.count > 0)
        torch.maximum(self.best, candidate_best, out=self.best)
        self.epoch = Moments.empty(*self.shape, self.best.device)
        return self.improved

    def best_candidates(self) -> torch.Tensor:
        """[L, N]: for each neuron, the candidate with the largest |running score|."""
        return torch.nan_to_num(self.score).abs().argmax(dim=1)

    def state_dict(self) -> dict:
        """Everything ``load_state_dict`` needs to continue bit for bit (tensors are references, not copies)."""
        return {
            "running": self.running._asdict(), "epoch": self.epoch._asdict(), "best": self.best,
            "improved": self.improved, "batches": self.batches,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        device = self.best.device
        self.running = Moments(**{k: v.to(device).clone() for k, v in state["running"].items()})
        self.epoch = Moments(**{k: v.to(device).clone() for k, v in state["epoch"].items()})
        self.best = state["best"].to(device).clone()
        self.improved = state["improved"].to(device).clone()
        self.batches = int(state["batches"])


def _score(m: Moments, mode: str) -> torch.Tensor:
    return _ref.score(m.cov, m.v_var, m.e_var, mode)
