"""Fine-tune one small model with LoRA and with PERA at the same rank, and report both results.

A small MLP is first trained on task A (a random teacher network), frozen, then adapted to task B (another
teacher: a shifted task). Each adapter run starts from identical factors: LoRA is the same layer with PERA's
coefficients h frozen at zero, so the only difference is the polynomial expansion. Several seeds; the table
reports the mean and spread of the final validation loss for each variant, whichever wins.

    python examples/pera_vs_lora.py [--rank 4] [--steps 400] [--seeds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn

import perfkern

IN, HIDDEN, OUT = 32, 128, 8


def teacher(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT))
    return net.requires_grad_(False)


def student() -> nn.Sequential:
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, OUT))


def data(net: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    return x, net(x)


def train(model: nn.Module, x, y, x_val, y_val, steps: int, lr: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x_val), y_val).item()


def second_order_share(model: nn.Module) -> float:
    """How large PERA's pair terms are next to the LoRA part of ΔW, averaged over the adapted layers."""
    shares = []
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, perfkern.PeraLinear):
                a, b, h = layer.lora_a, layer.lora_b, layer.lora_h
                lora = layer.scale * b @ a
                full = perfkern.pera_delta_weight(a, b, h, layer.scale, layer.pera_mode)
                shares.append(((full - lora).norm() / lora.norm()).item())
    return statistics.mean(shares)


def adapt(base: nn.Sequential, rank: int, mode: str, seed: int, train_h: bool) -> nn.Sequential:
    """``base`` with every Linear wrapped in a PERA adapter; ``train_h=False`` keeps h = 0, which is LoRA."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            wrapped = perfkern.PeraLinear(layer, rank=rank, mode=mode)
            wrapped.lora_h.requires_grad_(train_h)
            model[i] = wrapped
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    base = student()
    task_a, task_b = teacher(1), teacher(2)
    x_a, y_a = data(task_a, 8192, 10)
    print("pretraining the base on task A ...")
    train(base, x_a, y_a, *data(task_a, 2048, 11), steps=1500, lr=3e-3)
    base.requires_grad_(False)

    x_b, y_b = data(task_b, 4096, 20)
    x_val, y_val = data(task_b, 2048, 21)
    with torch.no_grad():
        print(f"base model on task B before adaptation: val MSE {nn.functional.mse_loss(base(x_val), y_val):.4f}")

    variants = {
        f"LoRA r={args.rank}": ("full", False),
        f"PERA full r={args.rank}": ("full", True),
        f"PERA square r={args.rank}": ("square", True),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for seed in range(args.seeds):
        for name, (mode, train_h) in variants.items():
            model = adapt(base, args.rank, mode, seed, train_h)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            loss = train(model, x_b, y_b, x_val, y_val, args.steps, lr=3e-3)
            results[name].append(loss)
            share = f"  second-order terms {second_order_share(model):.1%} of ΔW" if train_h else ""
            print(f"seed {seed}  {name:<18} trainable params {trainable:>6}  val MSE {loss:.5f}{share}")

    print(f"\nfinal validation MSE on task B over {args.seeds} seeds (lower is better)")
    print(f"{'variant':<20} {'mean':>9} {'std':>9} {'min':>9} {'max':>9}")
    for name, losses in results.items():
        std = statistics.stdev(losses) if len(losses) > 1 else 0.0
        print(f"{name:<20} {statistics.mean(losses):>9.5f} {std:>9.5f} {min(losses):>9.5f} {max(losses):>9.5f}")


if __name__ == "__main__":
    main()
