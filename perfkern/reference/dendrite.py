"""Dendrite-error correlation (Cascade-Correlation statistics, batched) in plain PyTorch: the truth (DESIGN §3.5).

For candidate outputs V [L, P, C, N] (L layers, P tokens, C candidates per neuron, N neurons) and the neurons'
errors E = ∂L/∂o [L, P, N], per (l, c, n):

    cov   = mean_p (V − V̄)(E − Ē)                         (Fahlman & Lebiere 1990, the candidate's S per output)
    score = cov                                           mode "cc"
          = cov / (σ_V σ_E)                               mode "pearson" (0 where a deviation is 0)

Two passes (means first, then centred sums), corrected for the error of the computed mean, in fp32 (fp64 for
fp64 inputs): V near 0.5 with a tiny spread is the normal case at initialisation, where the one-pass
E[VE] − E[V]E[E] cancels catastrophically.

Gradients are of the form ∂/∂V = α ⊙ (E − Ē) + β ⊙ (V − V̄) with α, β per (l, c, n): for "cc" α = g/P, β = 0;
for "pearson" α = g/(P σ_V σ_E), β = −g·score/(P σ_V²), where g is the upstream gradient of the score.

Statistics of two sets of tokens combine without the tokens (``merge``): the running state of the dendrite
trainer, and the reduction of per-rank batch statistics under data parallelism, are built from it.
"""

from __future__ import annotations

import torch

MODES = ("cc", "pearson")


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 statistics, fp64 for fp64 inputs."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def stats(
    values: torch.Tensor, errors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(v_mean [L, C, N], e_mean [L, N], cov [L, C, N], v_var [L, C, N], e_var [L, N]), population statistics."""
    acc = acc_dtype(values)
    v, e = values.to(acc), errors.to(acc)
    p = v.shape[1]
    v_mean, e_mean = v.mean(1), e.mean(1)
    dv = v - v_mean.unsqueeze(1)  # [L, P, C, N]
    de = e - e_mean.unsqueeze(1)  # [L, P, N]
    # The sums of the deviations are zero in exact arithmetic; subtracting them removes the mean's rounding error.
    sum_dv, sum_de = dv.sum(1), de.sum(1)
    cov = (dv * de.unsqueeze(2)).sum(1) / p - sum_dv * sum_de.unsqueeze(1) / (p * p)
    v_var = (dv * dv).sum(1) / p - (sum_dv / p) ** 2
    e_var = (de * de).sum(1) / p - (sum_de / p) ** 2
    return v_mean, e_mean, cov, v_var.clamp_min(0), e_var.clamp_min(0)


def score(cov: torch.Tensor, v_var: torch.Tensor, e_var: torch.Tensor, mode: str) -> torch.Tensor:
    """The per-(l, c, n) score from the statistics."""
    if mode == "cc":
        return cov.clone()
    denom = (v_var * e_var.unsqueeze(1)).sqrt()
    # A zero deviation gives 0; a NaN (from a NaN error) stays NaN, in its own neuron only.
    return torch.where((denom > 0) | denom.isnan(), cov / denom, torch.zeros_like(cov))


def dendrite_correlation(values: torch.Tensor, errors: torch.Tensor, mode: str = "cc") -> torch.Tensor:
    """score [L, C, N] for values [L, P, C, N] and errors [L, P, N]."""
    _, _, cov, v_var, e_var = stats(values, errors)
    return score(cov, v_var, e_var, mode)


def grad_coefficients(
    grad: torch.Tensor, score_: torch.Tensor, v_var: torch.Tensor, e_var: torch.Tensor, p: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(α, β) such that ∂(Σ grad ⊙ score)/∂V = α ⊙ (E − Ē) + β ⊙ (V − V̄); β is None for "cc"."""
    grad = grad.to(score_.dtype)
    if mode == "cc":
        return grad / p, None
    sd = (v_var * e_var.unsqueeze(1)).sqrt()
    ok = sd > 0
    alpha = torch.where(ok, grad / (p * sd.clamp_min(torch.finfo(sd.dtype).tiny)), torch.zeros_like(grad))
    beta = torch.where(ok, -grad * score_ / (p * v_var.clamp_min(torch.finfo(sd.dtype).tiny)), torch.zeros_like(grad))
    return alpha, beta


def grad(
    values: torch.Tensor,
    errors: torch.Tensor,
    v_mean: torch.Tensor,
    e_mean: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
) -> torch.Tensor:
    """α ⊙ (E − Ē) + β ⊙ (V − V̄), [L, P, C, N] in values' dtype."""
    acc = acc_dtype(values)
    out = alpha.unsqueeze(1) * (errors.to(acc) - e_mean.unsqueeze(1)).unsqueeze(2)
    if beta is not None:
        out = out + beta.unsqueeze(1) * (values.to(acc) - v_mean.unsqueeze(1))
    return out.to(values.dtype)


def merge(
    a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], frac: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The statistics of a mixture of two populations, weights (1 − f, f), from theirs: ``a`` and ``b`` are each
    (v_mean [L, C, N], e_mean [L, N], cov [L, C, N], v_var [L, C, N], e_var [L, N]), as ``stats`` returns them::

        δ_v = v_mean_b − v_mean_a                  δ_e = e_mean_b − e_mean_a
        v_mean = v_mean_a + f·δ_v                  e_mean = e_mean_a + f·δ_e
        v_var  = (1 − f)·v_var_a + f·v_var_b + f·(1 − f)·δ_v²
        e_var  = (1 − f)·e_var_a + f·e_var_b + f·(1 − f)·δ_e²
        cov    = (1 − f)·cov_a   + f·cov_b   + f·(1 − f)·δ_v·δ_e

    With f = n_b / (n_a + n_b) for sets of n_a and n_b tokens this is exactly the statistics of their union: the
    pairwise update of Chan, Golub & LeVeque (1983), M2 = M2_a + M2_b + δ²·n_a·n_b / n, divided by n. With a
    constant f it is an exponentially weighted population. ``frac`` is a float or a 0-d tensor."""
    va, ea, ca, sva, sea = a
    vb, eb, cb, svb, seb = b
    keep = 1 - frac
    spread = frac * keep
    d_v = vb - va
    d_e = (eb - ea).unsqueeze(-2)
    v_mean = va + frac * d_v
    e_mean = ea + frac * d_e.squeeze(-2)
    cov = keep * ca + frac * cb + spread * d_v * d_e
    v_var = keep * sva + frac * svb + spread * d_v * d_v
    e_var = keep * sea + frac * seb + spread * (d_e * d_e).squeeze(-2)
    return v_mean, e_mean, cov, v_var, e_var
