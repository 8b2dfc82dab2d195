"""One registry of benchmark shapes. Weight shapes are [N, K] (out, in), as nn.Linear stores them."""

import torch

# LLaMA-7B/8B projections: q/k/v/o, up/gate (7B), down (7B), up/gate (8B).
LLAMA_WEIGHTS = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]
# What the CPU reference can time in seconds.
CPU_WEIGHTS = [(1024, 1024), (4096, 4096)]


def weight_shapes() -> list[tuple[int, int]]:
    return LLAMA_WEIGHTS if torch.cuda.is_available() else CPU_WEIGHTS


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


# Tokens per call: decode, small batch, prefill/training.
LLAMA_TOKENS = [1, 16, 128, 2048, 8192]


def linear_shapes() -> list[tuple[int, int, int]]:
    """(M, N, K) of a linear layer call: M tokens, weight [N, K]."""
    if torch.cuda.is_available():
        return [(m, n, k) for (n, k) in LLAMA_WEIGHTS for m in LLAMA_TOKENS]
    return [(1, 1024, 1024), (128, 1024, 1024)]


def pera_shapes() -> list[tuple[int, int, int, int]]:
    """(M, N, K, r) of an adapter call."""
    if torch.cuda.is_available():
        return [(m, 4096, 4096, r) for m in (2048, 8192) for r in (4, 8, 16, 32)]
    return [(256, 512, 512, 4), (256, 512, 512, 16)]


def dendrite_shapes() -> list[tuple[int, int, int, int]]:
    """(L, P, C, N): layers, tokens (32 x 128 on a GPU, as GPT-2-medium fine-tuning), candidates, neurons."""
    if torch.cuda.is_available():
        return [(24, 4096, 4, 1024), (24, 4096, 4, 4096)]
    return [(4, 512, 4, 256)]
