"""PERA, polynomial-expanded LoRA, in plain PyTorch: the truth for every PERA kernel (DESIGN §3.4).

The expansion is of the factors, not of the activations (PERA, arXiv 2604.11841): with rows a_i of A [r, K],
columns b_i of B [N, r] and pairs P = {(i, j): i ≤ j} in ``torch.triu_indices(r, r)`` order restricted to the
mode,

    Â = [A ; h_p·(a_i ⊙ a_j)]  [r + |P|, K]        B̂ = [B , b_i ⊙ b_j]  [N, r + |P|]
    ΔW = s·B̂·Â                                     adapter(x) = s·(x·Âᵀ)·B̂ᵀ

Modes: ``full`` (all i ≤ j, |h| = r(r+1)/2), ``square`` (i = j, |h| = r), ``cross`` (i < j, |h| = r(r-1)/2).
Everything here materialises Â and B̂ and computes in fp32 (fp64 for fp64 inputs), then casts to x's dtype.
"""

from __future__ import annotations

import functools

import torch

MODES = ("full", "square", "cross")


@functools.cache
def _pairs_cpu(r: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(r, r)
    keep = {"full": i <= j, "square": i == j, "cross": i < j}[mode]
    return i[keep].contiguous(), j[keep].contiguous()


def pairs(r: int, mode: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) int64 index vectors of the mode's pairs, in ``torch.triu_indices(r, r)`` order."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    i, j = _pairs_cpu(r, mode)
    return i.to(device), j.to(device)


def num_pairs(r: int, mode: str) -> int:
    """|h| for rank ``r`` in ``mode``."""
    return {"full": r * (r + 1) // 2, "square": r, "cross": r * (r - 1) // 2}[mode]


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 accumulation, fp64 for fp64 inputs."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def expand(
    lora_a: torch.Tensor, lora_b: torch.Tensor, h: torch.Tensor, mode: str = "full"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â [r + |P|, K], B̂ [N, r + |P|]) in the accumulation dtype."""
    acc = acc_dtype(lora_a)
    a, b, hf = lora_a.to(acc), lora_b.to(acc), h.to(acc)
    i, j = pairs(a.shape[0], mode, a.device)
    a_hat = torch.cat([a, hf.unsqueeze(1) * a[i] * a[j]], dim=0)
    b_hat = torch.cat([b, b[:, i] * b[:, j]], dim=1)
    return a_hat, b_hat


def pera_adapter(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    h: torch.Tensor,
    scale: float = 1.0,
    mode: str = "full",
) -> torch.Tensor:
    """s·(x·Âᵀ)·B̂ᵀ, x [..., K] → [..., N]."""
    a_hat, b_hat = expand(lora_a, lora_b, h, mode)
    return (scale * (x.to(a_hat.dtype) @ a_hat.t()) @ b_hat.t()).to(x.dtype)


def pera_delta_weight(
    lora_a: torch.Tensor, lora_b: torch.Tensor, h: torch.Tensor, scale: float = 1.0, mode: str = "full"
) -> torch.Tensor:
    """ΔW = s·B̂·Â [N, K], in A's dtype."""
    a_hat, b_hat = expand(lora_a, lora_b, h, mode)
    return (scale * b_hat @ a_hat).to(lora_a.dtype)


def pera_adapter_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    h: torch.Tensor,
    scale: float = 1.0,
    mode: str = "full",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dA, dB, dh) of ``pera_adapter`` for upstream gradient G [..., N].

    With Z = x·Âᵀ and G_s = s·G: dB̂ = G_sᵀ·Z, dZ = G_s·B̂, dÂ = dZᵀ·x, dx = dZ·Â; then each pair p = (i, j)
    sends dB̂[:, r+p] ⊙ b_j to dB[:, i] and dB̂[:, r+p] ⊙ b_i to dB[:, j], h_p·dÂ[r+p] ⊙ a_j to dA[i] and
    h_p·dÂ[r+p] ⊙ a_i to dA[j] (twice to the same column when i = j), and dh_p = Σ_k dÂ[r+p, k]·a_i[k]·a_j[k]."""
    acc = acc_dtype(x)
    r, k = lora_a.shape
    a, b, hf = lora_a.to(acc), lora_b.to(acc), h.to(acc)
    i, j = pairs(r, mode, a.device)
    a_hat, b_hat = expand(lora_a, lora_b, h, mode)
    x2 = x.reshape(-1, k).to(acc)
    g = scale * grad.reshape(-1, grad.shape[-1]).to(acc)
    z = x2 @ a_hat.t()
    d_b_hat = g.t() @ z  # [N, r']
    d_z = g @ b_hat  # [M, r']
    d_a_hat = d_z.t() @ x2  # [r', K]
    dx = d_z @ a_hat
    d_pair_b, d_pair_a = d_b_hat[:, r:], d_a_hat[r:]
    d_b = d_b_hat[:, :r].clone()
    d_b.index_add_(1, i, d_pair_b * b[:, j])
    d_b.index_add_(1, j, d_pair_b * b[:, i])
    d_a = d_a_hat[:r].clone()
    d_a.index_add_(0, i, hf.unsqueeze(1) * d_pair_a * a[j])
    d_a.index_add_(0, j, hf.unsqueeze(1) * d_pair_a * a[i])
    d_h = (d_pair_a * a[i] * a[j]).sum(1)
    return dx.to(x.dtype).view(x.shape), d_a.to(lora_a.dtype), d_b.to(lora_b.dtype), d_h.to(h.dtype)
