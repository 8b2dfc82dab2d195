"""Fine-tune a small model with LoRA, then add dendrites to its LoRA layers; report both, over several seeds.

A small MLP is trained on task A, frozen, and adapted to task B with PEFT LoRA for ``--lora-epochs``. From that
point two runs continue for ``--extra-epochs`` more: the control keeps training LoRA alone; the other wraps every
LoRA layer in a ``DendriteLayer`` and lets ``DendriteTrainer`` alternate neuron and dendrite phases, both with
their defaults (the settings ``dendrite_study.py`` recommends). Both see the same batches and epochs; the table
reports final validation losses and parameter counts, whichever wins. ``dendrite_study.py`` adds the baseline
that matters more: LoRA with extra rank of the same parameter count.

    python examples/dendrites_after_lora.py [--seeds 3] [--lora-epochs 15] [--extra-epochs 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from perfkern.dendrites import DendriteTrainer, add_dendrites

IN, HIDDEN, OUT = 32, 128, 8


def teacher(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(IN, 64), nn.Tanh(), nn.Linear(64, OUT))
    return net.requires_grad_(False)


def data(net, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    return x, torch.sin(2 * net(x))


def epoch(model, x, y, step, seed):
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for i in range(0, x.shape[0], 128):
        idx = order[i : i + 128]
        step(nn.functional.mse_loss(model(x[idx]), y[idx]))


def val_loss(model, x, y) -> float:
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def plain_step(optimizer):
    def step(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lora-epochs", type=int, default=15)
    parser.add_argument("--extra-epochs", type=int, default=30)
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(IN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, OUT))
    x_a, y_a = data(teacher(1), 8192, 10)
    opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    for e in range(20):
        epoch(base, x_a, y_a, plain_step(opt), e)
    x_b, y_b = data(teacher(2), 4096, 20)
    x_val, y_val = data(teacher(2), 2048, 21)

    results = {"LoRA": [], "LoRA + dendrites": []}
    params = {"LoRA": [], "LoRA + dendrites": []}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        config = LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=["0", "2", "4"])
        lora = get_peft_model(copy.deepcopy(base), config)
        opt = torch.optim.Adam([p for p in lora.parameters() if p.requires_grad], lr=3e-3)
        for e in range(args.lora_epochs):
            epoch(lora, x_b, y_b, plain_step(opt), 100 * seed + e)
        after_lora = val_loss(lora, x_val, y_val)

        control = copy.deepcopy(lora)
        control_opt = torch.optim.Adam([p for p in control.parameters() if p.requires_grad], lr=3e-3)
        for e in range(args.extra_epochs):
            epoch(control, x_b, y_b, plain_step(control_opt), 1000 + 100 * seed + e)
        results["LoRA"].append(val_loss(control, x_val, y_val))

        grown = copy.deepcopy(lora)
        layers = add_dendrites(grown, include=lambda name, m: isinstance(m, LoraLayer))
        trainer = DendriteTrainer(grown, layers, lambda ps: torch.optim.Adam(ps, lr=3e-3),
                                  log=lambda line, s=seed: print(f"  seed {s}: {line}"))  # fmt: skip
        for e in range(args.extra_epochs):
            epoch(grown, x_b, y_b, trainer.step, 1000 + 100 * seed + e)
            trainer.end_epoch(val_loss(grown, x_val, y_val))
        results["LoRA + dendrites"].append(val_loss(grown, x_val, y_val))
        params["LoRA"].append(sum(p.numel() for p in control.parameters()))
        params["LoRA + dendrites"].append(sum(p.numel() for p in grown.parameters()))
        dendrites = [layer.num_dendrites for layer in layers]
        print(f"seed {seed}: after {args.lora_epochs} LoRA epochs val MSE {after_lora:.5f}; "
              f"+{args.extra_epochs} epochs: LoRA {results['LoRA'][-1]:.5f}, "
              f"LoRA + dendrites {results['LoRA + dendrites'][-1]:.5f} (dendrites per layer {dendrites})")  # fmt: skip

    print(f"\nfinal validation MSE on task B over {args.seeds} seeds (lower is better)")
    print(f"{'variant':<18} {'mean':>9} {'std':>9} {'min':>9} {'max':>9} {'parameters':>15}")
    for name, losses in results.items():
        std = statistics.stdev(losses) if len(losses) > 1 else 0.0
        lo, hi = min(params[name]), max(params[name])
        span = f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"
        print(f"{name:<18} {statistics.mean(losses):>9.5f} {std:>9.5f} {min(losses):>9.5f} {max(losses):>9.5f} "
              f"{span:>15}")  # fmt: skip


if __name__ == "__main__":
    main()
