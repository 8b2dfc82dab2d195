"""SLoPe with Hugging Face ``Trainer``: a tiny random Llama, sparsified 2:4 with lazy LoRA adapters (and optionally
dendrites on its MLP outputs), trained on sequences it generates, with ``PerfkernCallback`` switching the adapters
on late, refreshing the backward masks per optimizer step and running the dendrite cycle on evaluation plateaus.

    python examples/trainer_slope.py                 # 24 optimizer steps, seconds on a CPU
    python examples/trainer_slope.py --dendrites     # plus the dendrite cycle
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

import perfkern
from perfkern.dendrites import add_dendrites
from perfkern.integrations.transformers import PerfkernCallback

VOCAB = 64


class Progressions(torch.utils.data.Dataset):
    """Token sequences a, a + d, a + 2d, ... (mod VOCAB): learnable in a few dozen steps."""

    def __init__(self, count: int, length: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (count, 1), generator=g)
        step = torch.randint(1, 5, (count, 1), generator=g)
        self.ids = (start + step * torch.arange(length)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def train(
    steps: int = 24,
    accumulation: int = 2,
    dendrites: bool = False,
    output_dir: str | None = None,
    seed: int = 0,
) -> tuple[transformers.Trainer, PerfkernCallback]:
    model = tiny_llama(seed)
    perfkern.sparsify(model, rank=4, lazy=True, refresh_every=5)  # 2:4, double-pruned backward, lazy LoRA
    if dendrites:
        add_dendrites(model, include=lambda name, m: name.endswith("mlp.down_proj"), candidates=2, rank=2)
    callback = PerfkernCallback(
        adapter_start=0.75,
        dendrites={"patience": 1, "min_improvement": 0.5, "max_dendrite_evals": 2} if dendrites else None,
    )
    args = transformers.TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="perfkern-trainer-"),
        max_steps=steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=max(1, steps // 6),
        logging_steps=max(1, steps // 6),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        seed=seed,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Progressions(512, 12, seed=1),
        eval_dataset=Progressions(32, 12, seed=2),
        callbacks=[callback],
    )
    trainer.train()
    return trainer, callback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient accumulation (default: %(default)s)")
    parser.add_argument("--dendrites", action="store_true", help="add dendrites and run their cycle")
    args = parser.parse_args(argv)
    trainer, callback = train(args.steps, args.accumulation, args.dendrites)
    losses = [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]
    print("eval loss by step:", ", ".join(f"{s}: {loss:.3f}" for s, loss in losses))
    print("perfkern events:")
    for event in callback.events:
        print("  " + event)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
