"""``python -m perfkern demo``: train one small GPT-2-style model four ways and compare them honestly.

Variants, all from the same initial weights and on the same batches:

- ``dense``: plain ``nn.Linear`` layers;
- ``slope``: every projection 2:4 sparse from the start (``SparseLoRALinear``, double-pruned backward), with a
  lazy LoRA adapter switched on for the last ``--adapter-fraction`` of the steps (SLoPe);
- ``pera``: as ``slope`` with a PERA adapter;
- ``dendrites``: as ``slope``, plus a dendrite phase (base frozen, candidates trained on the error correlation)
  at ``--dendrite-at`` of the steps, after which each neuron installs its best candidate and training resumes.

The corpus is generated at run time by a small probabilistic grammar (no downloads), tokenised by character.
The report: final validation loss and perplexity, training throughput, parameter and weight-memory counts and
the backend that ran, plus a PNG of the loss curves.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import perfkern
from perfkern.dendrites import DendriteTrainer, add_dendrites

VARIANTS = ("dense", "slope", "pera", "dendrites")

_SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the engineer", "a small bird", "the teacher",
             "our neighbour", "the children", "a young fox", "the baker", "the river"]  # fmt: skip
_VERBS = ["sees", "likes", "builds", "finds", "follows", "paints", "carries", "watches", "answers", "remembers"]
_OBJECTS = ["a red ball", "the green door", "an old map", "the quiet garden", "a long letter", "the bright moon",
            "a wooden boat", "the last train", "a warm loaf", "the silver key"]  # fmt: skip
_PLACES = ["in the morning", "near the bridge", "after the rain", "under the tree", "by the sea", "at night",
           "in the kitchen", "on the hill"]  # fmt: skip
_LINKS = ["and then", "because", "while", "so", "but"]


def corpus(sentences: int = 6000, seed: int = 0) -> str:
    """A deterministic text of simple sentences from a small grammar (subject, verb, object, place, links)."""
    rng = random.Random(seed)

    def clause() -> str:
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.6:
            words.append(rng.choice(_PLACES))
        return " ".join(words)

    lines = []
    for _ in range(sentences):
        text = clause()
        if rng.random() < 0.4:
            text += f" {rng.choice(_LINKS)} {clause()}"
        lines.append(text[0].upper() + text[1:] + ".")
    return " ".join(lines)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """A GPT-2-style decoder: token and position embeddings, pre-norm blocks, a tied output head."""

    def __init__(self, vocab: int, d: int = 128, layers: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        for module in self.modules():  # GPT-2's initialisation: small weights, so the tied head starts near uniform
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tok.weight.t()


@dataclass
class Result:
    variant: str
    losses: list[tuple[int, float]]
    val_loss: float
    tokens_per_s: float
    params: int
    trainable: int
    weight_bytes: int
    backend: str
    notes: str
    val_points: list[tuple[int, float]] = field(default_factory=list)
    model: nn.Module | None = None  # the trained model, for the inference measurement


def _weight_bytes(model: nn.Module) -> int:
    """Bytes of the projection weights as stored (dense weights, or compressed values + metadata)."""
    total = 0
    for module in model.modules():
        if isinstance(module, perfkern.SparseLoRALinear):
            total += module.values.numel() * module.values.element_size() + module.meta.numel() * 2
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def _batches(data: torch.Tensor, batch: int, context: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=g)
        x = torch.stack([data[s : s + context] for s in starts])
        y = torch.stack([data[s + 1 : s + context + 1] for s in starts])
        yield x, y


@torch.no_grad()
def _evaluate(model: nn.Module, data: torch.Tensor, context: int, device: torch.device) -> float:
    model.eval()
    windows = data[: (len(data) - 1) // context * context + 1]
    x = windows[:-1].view(-1, context)[:64].to(device)
    y = windows[1:].view(-1, context)[:64].to(device)
    loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()).item()
    model.train()
    return loss


def run_variant(
    variant: str,
    base: TinyGPT,
    train: torch.Tensor,
    val: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
    progress,
) -> Result:
    import copy

    model = copy.deepcopy(base).to(device)
    notes = ""
    if variant != "dense":
        adapter = "pera" if variant == "pera" else "lora"
        skipped = perfkern.sparsify(model, rank=args.rank, adapter=adapter, backward="double", lazy=True)
        notes = f"{len(skipped)} layers left dense" if skipped else ""
    trainer = None
    layers = []
    if variant == "dendrites":
        layers = add_dendrites(model, include=lambda name, m: name.endswith(".out") and
                               isinstance(m, perfkern.SparseLoRALinear), candidates=4, rank=2)  # fmt: skip

    def make_optimizer(params):
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    if layers:
        trainer = DendriteTrainer(model, layers, make_optimizer, log=None)
        optimizer = None
    else:
        # Lazy adapters are in the optimizer from the start: without gradients they are skipped until switched on,
        # and nobody's optimizer state is reset at the switch.
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    adapter_step = int(args.steps * (1 - args.adapter_fraction))
    dendrite_start, dendrite_end = dendrite_phase(args)
    batches = _batches(train, args.batch, args.context, seed=1)
    val_every = math.ceil(args.steps / 5)  # at most 5 validation points, the last at the end
    val_points = []
    losses = []
    tokens = 0
    warmup = min(10, args.steps // 10)  # first steps (allocation, thread pools) are not timed
    start = time.perf_counter()
    for step in range(args.steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, tokens = time.perf_counter(), 0
        if variant != "dense" and step == adapter_step:
            for module in model.modules():
                if isinstance(module, perfkern.SparseLoRALinear):
                    module.enable_adapter()
        if trainer is not None and step == dendrite_start:
            trainer.start_dendrite_phase()
        if trainer is not None and step == dendrite_end:
            trainer.install_and_resume()
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        if trainer is not None:
            trainer.step(loss)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        tokens += x.numel()
        losses.append((step, loss.item()))
        if (step + 1) % val_every == 0 or step + 1 == args.steps:
            paused = time.perf_counter()
            val_points.append((step + 1, _evaluate(model, val, args.context, device)))
            start += time.perf_counter() - paused  # validation is not training throughput
        progress.update(1)
        progress.set_postfix(variant=variant, loss=f"{loss.item():.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if layers:
        notes = f"dendrites per layer {[layer.num_dendrites for layer in layers]}"
    backend = perfkern.last_backend("sparse24_mm") if variant != "dense" else "torch (dense)"
    return Result(
        variant=variant,
        losses=losses,
        val_loss=val_points[-1][1],
        tokens_per_s=tokens / elapsed,
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        weight_bytes=_weight_bytes(model),
        backend=backend or "-",
        notes=notes,
        val_points=val_points,
        model=model,
    )


@dataclass
class DecodeResult:
    variant: str
    tokens_per_s: float  # median over the timed runs
    spread: tuple[float, float]  # slowest and fastest run
    backend: str


@torch.no_grad()
def greedy_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int, context: int) -> torch.Tensor:
    """Greedy generation: append the most likely next token ``new_tokens`` times (the last ``context`` tokens are
    the model's window; no cache, so every step runs the whole window: M grows from the prompt to ``context``)."""
    idx = prompt
    for _ in range(new_tokens):
        logits = model(idx[:, -context:])[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], 1)
    return idx


def decode_throughput(result: Result, prompt: torch.Tensor, new_tokens: int, context: int, runs: int = 5,
                      warmup: int = 2) -> DecodeResult:  # fmt: skip
    """Tokens/s of greedy generation with a trained model, the median of ``runs`` timed runs after ``warmup``
    untimed ones (which also let ``auto`` measure each layer shape once: the timed runs only run)."""
    model = result.model.eval()
    device = prompt.device

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        greedy_decode(model, prompt, new_tokens, context)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return new_tokens * prompt.shape[0] / (time.perf_counter() - start)

    for _ in range(warmup):
        once()
    rates = sorted(once() for _ in range(runs))
    backend = perfkern.last_backend("sparse24_mm") if result.variant != "dense" else "torch (dense)"
    return DecodeResult(result.variant, rates[len(rates) // 2], (rates[0], rates[-1]), backend or "-")


def print_decode(decoded: list[DecodeResult], new_tokens: int, runs: int) -> None:
    dense = next((d for d in decoded if d.variant == "dense"), None)
    print(f"\ninference: greedy generation of {new_tokens} tokens, median of {runs} runs after warm-up")
    print(f"{'variant':<10} {'tokens/s':>10} {'vs dense':>9} {'min..max tokens/s':>20}  backend of the sparse product")
    for d in decoded:
        rel = f"{d.tokens_per_s / dense.tokens_per_s:.2f}x" if dense else "-"
        spread = f"{d.spread[0]:,.0f}..{d.spread[1]:,.0f}"
        print(f"{d.variant:<10} {d.tokens_per_s:>10,.0f} {rel:>9} {spread:>20}  {d.backend}")


def plot(results: list[Result], path: str, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    window = max(1, args.steps // 25)
    styles = {"dense": "-", "slope": "--", "pera": ":", "dendrites": "-."}  # variants overlap until they diverge
    for r in results:
        steps = [s for s, _ in r.losses]
        values = [v for _, v in r.losses]
        smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                  for i in range(len(values))]  # fmt: skip
        label = f"{r.variant} (val {r.val_loss:.3f})"
        (line,) = ax.plot(steps, smooth, styles.get(r.variant, "-"), lw=1.6, label=label)
        if r.val_points:
            ax.plot(*zip(*r.val_points, strict=True), "o", ms=3.5, color=line.get_color())
    top = ax.get_ylim()[1]
    if args.variants != ["dense"]:
        ax.axvline(int(args.steps * (1 - args.adapter_fraction)), color="grey", lw=0.8, ls="--")
        ax.text(int(args.steps * (1 - args.adapter_fraction)), top, " adapters on", va="top", fontsize=8)
    if "dendrites" in args.variants:
        start, end = dendrite_phase(args)
        ax.axvspan(start, end, color="tab:purple", alpha=0.12, lw=0)
        ax.text(start, top, " dendrite phase", va="top", fontsize=8, color="tab:purple")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (moving average of {window})")
    ax.set_title("perfkern demo: tiny GPT on the generated corpus (dots: validation loss)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def dendrite_phase(args: argparse.Namespace) -> tuple[int, int]:
    """First and last-plus-one step of the dendrite variant's dendrite phase (base frozen)."""
    start = int(args.steps * args.dendrite_at)
    return start, start + max(1, int(args.steps * 0.1))


def table(results: list[Result]) -> str:
    """The results as aligned columns: text left, numbers right."""
    dense = next((r for r in results if r.variant == "dense"), None)
    header = ["variant", "val loss", "ppl", "tokens/s", "params", "trainable", "weights KiB", "vs dense", "backend",
              "notes"]  # fmt: skip
    rows = [
        [r.variant, f"{r.val_loss:.4f}", f"{math.exp(r.val_loss):.2f}", f"{r.tokens_per_s:,.0f}", f"{r.params:,}",
         f"{r.trainable:,}", f"{r.weight_bytes / 1024:.1f}",
         f"{r.weight_bytes / dense.weight_bytes:.2f}x" if dense and r is not dense else "", r.backend, r.notes]
        for r in results
    ]  # fmt: skip
    left = {0, 8, 9}
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


DEFAULT_PLOT = os.path.join(tempfile.gettempdir(), "perfkern_demo.png")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, each option with its default."""


def _plain(text: str) -> str:
    return text.replace("``", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perfkern demo", description=_plain(__doc__),
                                     formatter_class=_HelpFormatter)  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT",
                        help=f"variants to train, of {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--steps", type=int, default=400, help="training steps per variant")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--context", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--d-model", type=int, default=128, help="width (a multiple of 16)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--rank", type=int, default=8, help="adapter rank")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (the dense model's stable range)")
    parser.add_argument("--adapter-fraction", type=float, default=0.2, help="last fraction of steps with adapters")
    parser.add_argument("--dendrite-at", type=float, default=0.5, help="when the dendrite phase starts (fraction)")
    parser.add_argument("--plot", default=DEFAULT_PLOT, help="where to write the loss curves (PNG)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--decode-tokens", type=int, default=48, help="tokens generated per timed inference run")
    parser.add_argument("--decode-runs", type=int, default=5, help="timed inference runs (the median is reported)")
    args = parser.parse_args(argv)
    if args.d_model % 16 != 0:
        parser.error(f"--d-model must be a multiple of 16, got {args.d_model}")

    from tqdm.auto import tqdm

    device = torch.device(args.device)
    text = corpus()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    torch.manual_seed(0)
    base = TinyGPT(len(chars), d=args.d_model, layers=args.layers, context=args.context)
    print(f"corpus: {len(text):,} characters, {len(chars)} symbols; model: {args.layers} blocks of width "
          f"{args.d_model}; {args.steps} steps of {args.batch}x{args.context} tokens on {device}")  # fmt: skip

    results = []
    with tqdm(total=args.steps * len(args.variants), unit="step", dynamic_ncols=True) as progress:
        for variant in args.variants:
            results.append(run_variant(variant, base, train, val, args, device, progress))

    print()
    print(table(results))
    print(
        "\nweights: projection weights as stored (compressed values + metadata for 2:4 layers); params counts every"
        " parameter (2:4 layers store half their weights). backend: what ran the last sparse product (auto measures"
        " each shape: on a CPU the core's CPU kernels, dense or the reference; the weight gradients run the reference"
        " or dense there)."
        " Rankings depend on the learning rate and the step count: the default lr is in the dense model's stable"
        " range, and a higher one can make the dense baseline look worse than it is."
    )
    prompt = data[split : split + 8].view(1, -1).to(device)
    decoded = [decode_throughput(r, prompt, args.decode_tokens, args.context, runs=args.decode_runs)
               for r in results]  # fmt: skip
    print_decode(decoded, args.decode_tokens, args.decode_runs)
    plot(results, args.plot, args)
    print(f"loss curves: {args.plot}")
    return 0
