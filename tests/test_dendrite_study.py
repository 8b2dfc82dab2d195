"""``examples/dendrite_study.py`` runs end to end in a tiny configuration: the table lists every variant, the
parameter counts follow from the layer shapes, the plot is written, and the sweep runs."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("dendrite_study", ROOT / "examples" / "dendrite_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dendrite_study"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    previous = torch.get_num_threads()
    yield module
    torch.set_num_threads(previous)
    del sys.modules["dendrite_study"]


def _rows(out: str, task: str) -> dict[str, list[str]]:
    block = out.split(f"\n{task} (")[1].split("\n\n")[0]
    return {line[:34].strip(): line[34:].split() for line in block.splitlines()[2:]}


def test_study_runs_and_reports(study, tmp_path, capsys):
    png = tmp_path / "study.png"
    args = ["--seeds", "2", "--tasks", "regression", "xor", "--pretrain-epochs", "1", "--lora-epochs", "1",
            "--extra-epochs", "2", "--jobs", "1", "--png", str(png)]  # fmt: skip
    assert study.main(args) == 0
    out = capsys.readouterr().out
    assert "regression (tuning): test MSE over 2 seeds" in out and "xor (held out): test accuracy %" in out
    names = ["LoRA", "LoRA + rank (matched)"] + [name.strip() for name, _ in study.variants()]
    for task in ("regression", "xor"):
        rows = _rows(out, task)
        assert list(rows) == names
        lora_params = int(rows["LoRA"][2].replace(",", ""))
        base = study.base_mlp(study.TASKS[task].out)
        layers = [(32, 128), (128, 128), (128, study.TASKS[task].out)]
        assert lora_params == sum(p.numel() for p in base.parameters()) + 4 * sum(k + n for k, n in layers)
        rank = int(re.search(r"rank \[(\d+)\]", " ".join(rows["LoRA + rank (matched)"])).group(1))
        matched = int(rows["LoRA + rank (matched)"][5].replace(",", ""))
        assert matched == lora_params + rank * sum(k + n for k, n in layers)
    assert png.exists() and png.stat().st_size > 10_000


def test_sweep_runs_on_the_tuning_tasks(study, capsys):
    args = ["--sweep", "--seeds", "1", "--pretrain-epochs", "1", "--lora-epochs", "1", "--extra-epochs", "1",
            "--jobs", "1"]  # fmt: skip
    assert study.main(args) == 0
    out = capsys.readouterr().out
    assert "regression (tuning)" in out and "classification (tuning)" in out and "xor" not in out
    assert all(name in out for name, _ in study.SWEEP)
