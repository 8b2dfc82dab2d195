"""Workers for ``test_distributed.py``: a small MLP of ``SparseLoRALinear`` layers trained under DDP and FSDP2
(gloo, CPU), and the same training in one process for comparison.

Run by ``torch.multiprocessing`` (``ddp_worker``) or by ``torchrun`` on this file (``fsdp`` scenario); every
rank writes what it saw to ``<out>/rank<r>.pt`` for the test to compare.
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
from perfkern.ops import _common

FEATURES = 64
RANK = 4
GLOBAL_BATCH = 8
STEPS = 4
REFRESH_EVERY = 2
OPTIMIZERS = ("sgd", "adamw")
CHECKPOINTED = "adamw"
PG_TIMEOUT = datetime.timedelta(seconds=60)


def build_model(seed: int = 0) -> nn.Sequential:
    """Dense input layer, then a LoRA and a PERA ``SparseLoRALinear`` (double-pruned backward), fp32. The dense
    layer makes the first sparse layer's input gradient (its backward copy) part of the result."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(FEATURES, FEATURES),
        nn.GELU(),
        SparseLoRALinear(FEATURES, FEATURES, rank=RANK, backward="double", lazy=False, refresh_every=REFRESH_EVERY),
        nn.GELU(),
        SparseLoRALinear(
            FEATURES, FEATURES, rank=RANK, adapter="pera", backward="double", lazy=False, refresh_every=REFRESH_EVERY
        ),
    )
    with torch.no_grad():
        for _, layer in sparse_layers(model):
            layer.lora_b.normal_(0.0, 0.2)
            if layer.lora_h is not None:
                layer.lora_h.normal_(0.0, 0.2)
    return model


def sparse_layers(model: nn.Module) -> list[tuple[str, SparseLoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SparseLoRALinear)]


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    raise ValueError(f"unknown optimizer {name!r}")


def global_batch(step: int, size: int = GLOBAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(size, FEATURES, generator=gen), torch.randn(size, FEATURES, generator=gen)


def local_slice(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = t.shape[0] // world
    return t[rank * per : (rank + 1) * per]


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain, detached copy of ``t``; a DTensor (FSDP2's sharded parameters and gradients) is gathered first,
    which is a collective: every rank must call this in the same order."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().clone()


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    rank: int = 0,
    world: int = 1,
    steps: int = STEPS,
    forward: nn.Module | None = None,
) -> dict:
    """``steps`` optimizer steps on this rank's share of each global batch (mean squared error). Returns the
    first step's gradients, the final parameters and buffers, and each sparse layer's ``updates`` after every
    forward. ``forward`` (default ``model``) is what runs the batch, e.g. the DDP wrapper of ``model``."""
    forward = model if forward is None else forward
    layers = sparse_layers(model)
    grads0: dict[str, torch.Tensor] = {}
    updates: list[list[int]] = []
    for step in range(steps):
        x, y = global_batch(step)
        loss = F.mse_loss(forward(local_slice(x, rank, world)), local_slice(y, rank, world))
        updates.append([int(layer.updates) for _, layer in layers])
        loss.backward()
        if step == 0:
            grads0 = {name: full(p.grad) for name, p in model.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {
        "grads0": grads0,
        "params": {name: full(p) for name, p in model.named_parameters()},
        "buffers": {f"{name}.{b}": full(t) for name, layer in layers for b, t in layer.named_buffers()},
        "updates": updates,
    }


def probe(model: nn.Module, forward: nn.Module | None = None) -> dict:
    """Output, input gradient and parameter gradients of ``model`` on a fixed batch (the same on every rank).
    The input gradient passes through both sparse layers' double-pruned backward copies."""
    forward = model if forward is None else forward
    x, y = global_batch(99)
    x.requires_grad_(True)
    out = forward(x)
    F.mse_loss(out, y).backward()
    result = {
        "x": x.detach().clone(),
        "out": out.detach().clone(),
        "x_grad": x.grad.detach().clone(),
        "grads": {name: full(p.grad) for name, p in model.named_parameters()},
    }
    model.zero_grad(set_to_none=True)
    return result


def _setup(rank: int, world: int, init_method: str | None) -> None:
    os.environ["PERFKERN_BACKEND"] = "reference"
    torch.set_num_threads(1)
    _common.set_poison(True)
    torch.distributed.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world, timeout=PG_TIMEOUT
    )


def _teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# DDP.


def ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Plain ``DistributedDataParallel(model)`` (it broadcasts every buffer, the 2:4 metadata included, at
    construction and before every forward); then, on a group of its own, whether it can be built at all."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    _setup(rank, world, f"tcp://127.0.0.1:{port}")
    try:
        result: dict = {}
        for opt_name in OPTIMIZERS:
            model = build_model()
            ddp = DDP(model)
            result[opt_name] = train(model, make_optimizer(opt_name, ddp), rank, world, forward=ddp)
            result[opt_name]["probe"] = probe(model, forward=ddp)
        group = torch.distributed.new_group(backend="gloo", timeout=PG_TIMEOUT)
        try:
            DDP(build_model(), process_group=group)
            result["default_ddp_error"] = None
        except RuntimeError as err:
            result["default_ddp_error"] = str(err)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        _teardown()


# FSDP2 and a sharded checkpoint.


def shard(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for _, layer in sparse_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def fsdp_main(out_dir: str, ckpt_dir: str) -> None:
    """FSDP2 training with each optimizer; the ``CHECKPOINTED`` run is saved with DCP (model and optimizer) and
    loaded into a freshly initialised FSDP2 model, whose probe and further training the test compares."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _setup(rank, world, None)
    try:
        mesh = init_device_mesh("cpu", (world,))
        result: dict = {}
        for opt_name in OPTIMIZERS:
            model = shard(build_model(), mesh)
            opt = make_optimizer(opt_name, model)
            result[opt_name] = train(model, opt, rank, world)
            result[opt_name]["value_types"] = sorted({type(p).__name__ for p in model.parameters()})
            if opt_name == CHECKPOINTED:
                dcp.save(
                    {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                    checkpoint_id=ckpt_dir,
                )
                saved, saved_opt = model, opt
            result[opt_name]["probe"] = probe(model)

        fresh = shard(build_model(seed=1), mesh)
        fresh_opt = make_optimizer(CHECKPOINTED, fresh)
        state = {"model": get_model_state_dict(fresh), "optim": get_optimizer_state_dict(fresh, fresh_opt)}
        dcp.load(state, checkpoint_id=ckpt_dir)
        set_model_state_dict(fresh, state["model"])
        set_optimizer_state_dict(fresh, fresh_opt, state["optim"])
        result["reloaded_probe"] = probe(fresh)

        result["resumed"] = train(saved, saved_opt, rank, world, steps=2)
        result["reloaded_resumed"] = train(fresh, fresh_opt, rank, world, steps=2)
        result["meta_init"] = meta_init_run(mesh, rank, world)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        _teardown()


def meta_init_run(mesh, rank: int, world: int) -> dict:
    """FSDP2's meta-device initialisation: the model is built on the meta device (no memory, no computation),
    sharded, allocated with ``to_empty`` and given the full state dict of the single-process model, then trained
    as that model is."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    with torch.device("meta"):
        model = build_model()
    assert all(p.is_meta for p in model.parameters())
    shard(model, mesh)
    model.to_empty(device="cpu")
    set_model_state_dict(model, build_model().state_dict(), options=StateDictOptions(full_state_dict=True))
    return train(model, make_optimizer(CHECKPOINTED, model), rank, world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["fsdp"])
    parser.add_argument("out_dir")
    parser.add_argument("ckpt_dir")
    args = parser.parse_args()
    fsdp_main(args.out_dir, args.ckpt_dir)


if __name__ == "__main__":
    main()
