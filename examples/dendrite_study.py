"""Do dendrites earn their parameters? Dendrites after LoRA against LoRA alone and against LoRA with extra rank of
the same parameter count, on three small tasks, over several seeds.

Each task has a base MLP pretrained on a task A (once, the same for every seed) and adapted to a task B with PEFT
LoRA (rank 4 on every linear layer) for ``--lora-epochs``. From that point every variant continues for
``--extra-epochs`` on the same batches in the same order:

- ``LoRA``: LoRA alone;
- ``LoRA + rank k``: a second LoRA of rank k on every layer (B = 0, so the function does not jump), k chosen per
  seed so that it adds as many parameters as the recommended dendrites ended with;
- ``dendrites``: every LoRA layer wrapped in a ``DendriteLayer``, ``DendriteTrainer`` with its defaults (the
  recommended settings); then the same with one option changed at a time (installed dendrites frozen or
  trainable, cascade, rollback, neuron optimizer kept or rebuilt);
- ``GD dendrites``: the defaults with gradient-descent candidates (no correlation objective), the free
  Perforated AI library's kind.

Phase switches and rollbacks see a validation set; the table reports a separate test set. The defaults were
tuned on ``regression`` and ``classification``; ``xor`` was not looked at while tuning. Wall time is the
continuation's, per run, one thread each, ``--jobs`` runs at a time: indicative only on a shared machine.

    python examples/dendrite_study.py [--seeds 3] [--tasks regression classification xor] [--jobs 2]
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

IN, HIDDEN = 32, 128
BATCH = 256
TUNED_ON = ("regression", "classification")


@dataclass(frozen=True)
class Task:
    """Generated data for a task A (pretraining) and a task B (adaptation); ``metric`` on the test set."""

    name: str
    out: int
    classes: bool
    metric: str
    lower_is_better: bool


TASKS = {
    "regression": Task("regression", 8, False, "test MSE", True),
    "classification": Task("classification", 10, True, "test accuracy %", False),
    "xor": Task("xor", 4, True, "test accuracy %", False),
}


def _teacher(seed: int, out: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, 64), nn.Tanh(), nn.Linear(64, out)).requires_grad_(False)


def _shifted(teacher: nn.Module, seed: int) -> nn.Module:
    """The teacher with its output layer rotated halfway (45°) towards a random one of the same scale."""
    other = _teacher(seed, teacher[2].out_features)
    shifted = copy.deepcopy(teacher)
    with torch.no_grad():
        for mine, theirs in zip(shifted[2].parameters(), other[2].parameters(), strict=True):
            mine.mul_(math.cos(math.pi / 4)).add_(theirs, alpha=math.sin(math.pi / 4))
    return shifted


def make_data(task: Task, which: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples of task A or B, x ~ N(0, I_32).

    regression (as ``dendrites_after_lora.py``): y = sin(2·teacher(x)), A and B two random tanh MLP teachers.
    classification: y = argmax of a random tanh MLP teacher's 10 logits; B's teacher has its output layer rotated
    halfway towards a random one (a shifted task, as fine-tuning meets).
    xor: 4 classes, 2·[(x·u1)(x·u2) > 0] + [(x·u3)(x·u4) > 0] for random unit directions; B replaces u4 by a new
    direction, so one of the two XOR bits needs a new feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    if task.name == "regression":
        return x, torch.sin(2 * _teacher({"A": 1, "B": 2}[which], task.out)(x))
    if task.name == "classification":
        teacher = _teacher(1, task.out)
        return x, (teacher if which == "A" else _shifted(teacher, 2))(x).argmax(1)
    u = torch.randn(IN, 5, generator=torch.Generator().manual_seed(101))
    u = u[:, [0, 1, 2, 3 if which == "A" else 4]]
    p = x @ (u / u.norm(dim=0))
    return x, 2 * (p[:, 0] * p[:, 1] > 0).long() + (p[:, 2] * p[:, 3] > 0).long()


def loss_fn(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if task.classes else F.mse_loss(out, y)


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, metric): the metric is the MSE or the accuracy in %."""
    out = model(x)
    loss = loss_fn(task, out, y).item()
    return loss, loss if not task.classes else 100.0 * (out.argmax(1) == y).float().mean().item()


def run_epoch(task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step, seed: int) -> None:
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for i in range(0, x.shape[0], BATCH):
        idx = order[i : i + BATCH]
        step(loss_fn(task, model(x[idx]), y[idx]))


def plain_step(optimizer: torch.optim.Optimizer):
    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-3)


def base_mlp(out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, out))


@functools.cache
def pretrained(task_name: str, epochs: int) -> dict[str, torch.Tensor]:
    """The base MLP trained on task A for ``epochs`` (the same for every seed)."""
    task = TASKS[task_name]
    torch.manual_seed(0)
    base = base_mlp(task.out)
    x, y = make_data(task, "A", 8192, 10)
    opt = adam(base.parameters())
    for e in range(epochs):
        run_epoch(task, base, x, y, plain_step(opt), e)
    return base.state_dict()


class ExtraRank(nn.Module):
    """``layer(x) + (x·Aᵀ)·Bᵀ`` with A [k, K] ~ N(0, 1/K) and B [N, k] = 0: a second LoRA of rank k (scale 1)."""

    def __init__(self, layer: nn.Module, rank: int) -> None:
        super().__init__()
        self.layer = layer
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.a = nn.Parameter(torch.randn(rank, self.in_features) / math.sqrt(self.in_features))
        self.b = nn.Parameter(torch.zeros(self.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + (x @ self.a.t()) @ self.b.t()


def lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _defaults() -> dict:
    """The library's defaults for the dendrite layer and trainer options the study varies."""
    import inspect

    from perfkern.dendrites import DendriteLayer, DendriteTrainer

    out = {k: p.default for k, p in inspect.signature(DendriteTrainer).parameters.items()}
    out.update({k: p.default for k, p in inspect.signature(DendriteLayer).parameters.items() if k != "base"})
    return out


def variants() -> list[tuple[str, dict]]:
    """(name, options): the recommended defaults, then each option of item 2 changed alone, then GD candidates."""
    d = _defaults()
    flip = {"frozen": "trainable", "trainable": "frozen", "keep": "rebuild", "rebuild": "keep"}
    return [
        ("dendrites (defaults)", {}),
        (f"  installed {flip[d['installed']]}", {"installed": flip[d["installed"]]}),
        (f"  cascade {'off' if d['cascade'] else 'on'}", {"cascade": not d["cascade"]}),
        (f"  rollback {'off' if d['rollback'] else 'on'}", {"rollback": not d["rollback"]}),
        (f"  optimizer {flip[d['switch_optimizer']]}", {"switch_optimizer": flip[d["switch_optimizer"]]}),
        ("GD dendrites", {"objective": "gd"}),
    ]


# The settings tried on the tuning tasks (``--sweep``), after a first sweep at batch 128 had shown that trainable
# dendrites and short dendrite phases help (C: candidates, R: rank, p: patience, d: longest dendrite phase in
# epochs); the last row won and became the library's defaults.
SWEEP = [
    ("C4 R4 frozen p2 d5 (0.1 defaults)", {"candidates": 4, "rank": 4, "installed": "frozen", "patience": 2,
                                           "max_dendrite_epochs": 5}),
    ("C4 R2 trainable p2 d5", {"candidates": 4, "rank": 2, "installed": "trainable", "patience": 2,
                               "max_dendrite_epochs": 5}),
    ("C4 R2 trainable p2 d2", {"candidates": 4, "rank": 2, "installed": "trainable", "patience": 2,
                               "max_dendrite_epochs": 2}),
    ("C4 R2 trainable p1 d2", {"candidates": 4, "rank": 2, "installed": "trainable", "patience": 1,
                               "max_dendrite_epochs": 2}),
    ("C8 R2 trainable p1 d2", {"candidates": 8, "rank": 2, "installed": "trainable", "patience": 1,
                               "max_dendrite_epochs": 2}),
    ("C4 R1 trainable p1 d2", {"candidates": 4, "rank": 1, "installed": "trainable", "patience": 1,
                               "max_dendrite_epochs": 2}),
    ("C4 R4 trainable p1 d2", {"candidates": 4, "rank": 4, "installed": "trainable", "patience": 1,
                               "max_dendrite_epochs": 2}),
    ("C4 R2 trainable p1 d2 cc", {"candidates": 4, "rank": 2, "installed": "trainable", "patience": 1,
                                  "max_dendrite_epochs": 2, "mode": "cc"}),
    ("C4 R2 trainable p1 d1", {"candidates": 4, "rank": 2, "installed": "trainable", "patience": 1,
                               "max_dendrite_epochs": 1}),
]  # fmt: skip


def _split(options: dict) -> tuple[dict, dict]:
    """(DendriteLayer kwargs, DendriteTrainer kwargs)."""
    layer = {k: options[k] for k in ("candidates", "rank", "mode", "init_scale", "cascade") if k in options}
    return layer, {k: v for k, v in options.items() if k not in layer}


def continue_training(task, lora, data, epochs, seed, kind, options=None):
    """Continue ``lora`` for ``epochs`` as ``kind`` ("lora", "dendrites" with ``options``, or "rank" with
    ``options["rank"]``). Returns (test metric, parameters, seconds, note)."""
    from perfkern.dendrites import DendriteTrainer, add_dendrites

    (x_b, y_b), (x_val, y_val), (x_test, y_test) = data
    start = time.perf_counter()
    model = copy.deepcopy(lora)
    torch.manual_seed(10_000 + seed)
    note = ""
    if kind == "dendrites":
        layer_kwargs, trainer_kwargs = _split(options)
        targets = lora_layers(model)
        layers = add_dendrites(model, include=lambda n, m: any(m is t for t in targets), **layer_kwargs)
        trainer = DendriteTrainer(model, layers, adam, log=None, **trainer_kwargs)
        step = trainer.step
    else:
        if kind == "rank":
            for m in lora_layers(model):
                parent, _, child = next(n for n, mod in model.named_modules() if mod is m).rpartition(".")
                setattr(model.get_submodule(parent), child, ExtraRank(m, options["rank"]))
            note = options["rank"]
        step = plain_step(adam([p for p in model.parameters() if p.requires_grad]))
    for e in range(epochs):
        run_epoch(task, model, x_b, y_b, step, 1000 + 100 * seed + e)
        if kind == "dendrites":
            trainer.end_epoch(evaluate(task, model, x_val, y_val)[0])
    if kind == "dendrites":
        note = [layer.num_dendrites for layer in layers]
    return evaluate(task, model, x_test, y_test)[1], count(model), time.perf_counter() - start, note


def run_job(
    task_name: str, seed: int, pretrain_epochs: int, lora_epochs: int, extra_epochs: int, sweep: bool = False
) -> dict:
    """One task and seed: LoRA for ``lora_epochs``, then every variant (or every ``SWEEP`` setting) for
    ``extra_epochs``. Returns {"task", "seed", "results": {name: (metric, params, seconds, note)}}."""
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(1)
    task = TASKS[task_name]
    data = [make_data(task, "B", n, s) for n, s in ((4096, 20), (1024, 21), (4096, 22))]
    base = base_mlp(task.out)
    base.load_state_dict(pretrained(task_name, pretrain_epochs))
    torch.manual_seed(seed)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["0", "2", "4"]))
    opt = adam([p for p in lora.parameters() if p.requires_grad])
    for e in range(lora_epochs):
        run_epoch(task, lora, *data[0], plain_step(opt), 100 * seed + e)
    results = {"LoRA": continue_training(task, lora, data, extra_epochs, seed, "lora")}
    for name, options in SWEEP if sweep else variants():
        results[name] = continue_training(task, lora, data, extra_epochs, seed, "dendrites", dict(options))
    if not sweep:
        added = results["dendrites (defaults)"][1] - results["LoRA"][1]
        rank = max(1, round(added / sum(m.in_features + m.out_features for m in lora_layers(lora))))
        results["LoRA + rank (matched)"] = continue_training(task, lora, data, extra_epochs, seed, "rank",
                                                             {"rank": rank})  # fmt: skip
    return {"task": task_name, "seed": seed, "results": results}


def _std(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(jobs: list[dict], tasks: list[str]) -> list[str]:
    lines = []
    for task_name in tasks:
        task = TASKS[task_name]
        runs = [j for j in jobs if j["task"] == task_name]
        names = list(runs[0]["results"])
        names = names[:1] + names[-1:] + names[1:-1] if "LoRA + rank (matched)" in names else names
        tag = "tuning" if task_name in TUNED_ON else "held out"
        arrow = "lower is better" if task.lower_is_better else "higher is better"
        lines.append(f"\n{task_name} ({tag}): {task.metric} over {len(runs)} seeds, {arrow}")
        lines.append(f"{'variant':<34} {'mean':>9} {'± std':>8} {'Δ vs LoRA':>18} {'params':>15} {'added':>13} "
                     f"{'wall s':>7}  notes")  # fmt: skip
        lora_params = runs[0]["results"]["LoRA"][1]
        digits = 5 if task.lower_is_better else 2
        for name in names:
            metric, params, seconds, notes = zip(*(r["results"][name] for r in runs), strict=True)
            std = _std(metric)
            delta = [m - r["results"]["LoRA"][0] for m, r in zip(metric, runs, strict=True)]
            paired = "" if name == "LoRA" else f"{statistics.mean(delta):+.{digits}f} ± {_std(delta):.{digits}f}"
            lo, hi = min(params), max(params)
            span = f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"
            added = "" if name == "LoRA" else (f"+{lo - lora_params:,}" if lo == hi else
                                               f"+{lo - lora_params:,}–{hi - lora_params:,}")  # fmt: skip
            note = "" if name == "LoRA" else (f"rank {sorted(set(notes))}" if name.startswith("LoRA") else
                                              "dendrites " + " ".join(map(str, notes)).replace(", ", ","))  # fmt: skip
            mean = statistics.mean(metric)
            lines.append(f"{name:<34} {mean:>9.{digits}f} {std:>8.{digits}f} {paired:>18} {span:>15} {added:>13} "
                         f"{statistics.mean(seconds):>7.1f}  {note}")  # fmt: skip
    return lines


def plot(jobs: list[dict], tasks: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), squeeze=False)
    for ax, task_name in zip(axes[0], tasks, strict=True):
        task = TASKS[task_name]
        runs = [j for j in jobs if j["task"] == task_name]
        for i, name in enumerate(runs[0]["results"]):
            metric = [r["results"][name][0] for r in runs]
            added = statistics.mean(r["results"][name][1] - r["results"]["LoRA"][1] for r in runs)
            std = _std(metric)
            ax.errorbar(added, statistics.mean(metric), yerr=std, fmt="os^vD<>P"[i % 8], capsize=3, label=name.strip())
        ax.set_xlabel("parameters added to LoRA")
        ax.set_ylabel(task.metric)
        ax.set_title(f"{task_name} ({'tuning' if task_name in TUNED_ON else 'held out'})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--pretrain-epochs", type=int, default=15, help="of the base on task A")
    parser.add_argument("--lora-epochs", type=int, default=10)
    parser.add_argument("--extra-epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--png", default="dendrite_study.png")
    parser.add_argument("--sweep", action="store_true", help="the tuning sweep (SWEEP) on the tuning tasks")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tasks = list(TUNED_ON) if args.sweep else args.tasks
    work = [(t, s, args.pretrain_epochs, args.lora_epochs, args.extra_epochs, args.sweep)
            for t in tasks for s in range(args.seeds)]  # fmt: skip
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            jobs = list(pool.map(run_job, *zip(*work, strict=True)))
    else:
        jobs = [run_job(*w) for w in work]
    for line in table(jobs, tasks):
        print(line)
    written = ""
    if not args.sweep:
        plot(jobs, tasks, args.png)
        written = f"; plot: {args.png}"
    print(f"\n{len(work)} task-seed jobs in {time.perf_counter() - start:.0f} s{written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
