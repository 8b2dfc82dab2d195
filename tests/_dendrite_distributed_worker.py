"""Worker for ``test_dendrite_distributed.py``: the dendrite cycle under DDP (gloo, CPU) on a model of
``SparseLoRALinear`` layers and on a PEFT LoRA model, and the same cycle in one process on the whole batch.

``torchrun --nproc-per-node 2 _dendrite_distributed_worker.py <out_dir>``: every rank writes what it saw to
``<out_dir>/rank<r>.pt``; ``run(scenario)`` without a process group is the single-process reference.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from perfkern import SparseLoRALinear
from perfkern.dendrites import DendriteTrainer, add_dendrites
from perfkern.ops import _common

FEATURES = 32
GLOBAL_BATCH = 16
STEPS_PER_EPOCH = 3
EPOCHS = 9
# Plateaus the test can rely on: a neuron phase ends after its second epoch unless the loss drops tenfold, a
# dendrite phase after two epochs.
CYCLE = {"patience": 1, "min_improvement": 0.9, "max_dendrite_epochs": 2}
SCENARIOS = {
    "sparse-correlation": ("sparse", {"mode": "pearson"}, {"installed": "frozen"}),
    "peft-cc-trainable-cascade": (
        "peft",
        {"mode": "cc", "cascade": True},
        {"installed": "trainable", "rollback": True, "switch_optimizer": "rebuild"},
    ),
    "sparse-gd": ("sparse", {}, {"objective": "gd"}),
}
PG_TIMEOUT = datetime.timedelta(seconds=60)


def build(kind: str) -> tuple[nn.Module, list]:
    """A dense input layer, then two linear layers with adapters wrapped in dendrites: ``SparseLoRALinear``
    (LoRA on a 2:4 weight, double-pruned backward) or PEFT LoRA layers on ``nn.Linear``."""
    torch.manual_seed(0)
    if kind == "sparse":
        model = nn.Sequential(
            nn.Linear(FEATURES, FEATURES),
            nn.GELU(),
            SparseLoRALinear(FEATURES, FEATURES, rank=4, lazy=False, refresh_every=2),
            nn.GELU(),
            SparseLoRALinear(FEATURES, 16, rank=4, lazy=False, refresh_every=2),
        )
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, SparseLoRALinear):
                    m.lora_b.normal_(0.0, 0.2)
        return model, [m for m in model.modules() if isinstance(m, SparseLoRALinear)]
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    base = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.GELU(), nn.Linear(FEATURES, FEATURES), nn.GELU(),
                         nn.Linear(FEATURES, 16))  # fmt: skip
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["2", "4"], init_lora_weights=False))
    return model, [m for m in model.modules() if isinstance(m, LoraLayer)]


def batch(step: int, size: int = GLOBAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, FEATURES, generator=gen)
    return x, torch.sin(2 * x[:, :16]) + 0.1 * torch.randn(size, 16, generator=gen)


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = t.shape[0] // world
    return t[rank * per : (rank + 1) * per]


def run(scenario: str, rank: int = 0, world: int = 1) -> dict:
    """The cycle for EPOCHS epochs on this rank's share of every global batch; the validation loss is this
    rank's share's too (the trainer averages it over ranks). Returns the events, the phase at every step, every
    layer's running statistics after every correlation step, and the final state dict."""
    kind, layer_kwargs, options = SCENARIOS[scenario]
    model, targets = build(kind)
    layers = add_dendrites(model, include=lambda name, m: any(m is t for t in targets), candidates=3, rank=2,
                           **layer_kwargs)  # fmt: skip
    trainer = DendriteTrainer(model, layers, lambda ps: torch.optim.AdamW(ps, lr=1e-2), log=None, **CYCLE, **options)
    forward = trainer.wrap_ddp() if world > 1 else model
    x_val, y_val = batch(-1, 64)
    phases, running = [], []
    for epoch in range(EPOCHS):
        for s in range(STEPS_PER_EPOCH):
            x, y = batch(epoch * STEPS_PER_EPOCH + s)
            phases.append(trainer.phase)
            trainer.step(F.mse_loss(forward(shard(x, rank, world)), shard(y, rank, world)))
            if trainer.states:
                running.append({i: state.running._asdict() for i, state in trainer.states.items()})
        with torch.no_grad():
            trainer.end_epoch(F.mse_loss(model(shard(x_val, rank, world)), shard(y_val, rank, world)).item())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"events": trainer.events, "phases": phases, "running": running, "state": state}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    os.environ["PERFKERN_BACKEND"] = "reference"
    torch.set_num_threads(1)
    _common.set_poison(True)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=PG_TIMEOUT)
    try:
        result = {name: run(name, rank, world) for name in SCENARIOS}
        torch.save(result, Path(args.out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
