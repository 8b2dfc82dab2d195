"""The README's recipes run as written: every Python block marked ``<!-- readme-test -->`` is executed on a tiny
random Llama (``model``), with a small ``train_dataset``, in a scratch directory holding the compressed-tensors
checkpoint the recipes name."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import torch

import perfkern

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"<!-- readme-test -->\n```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


def _example():
    spec = importlib.util.spec_from_file_location("trainer_slope", ROOT / "examples" / "trainer_slope.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_has_its_recipes():
    assert len(BLOCKS) == 4
    recipes = " ".join(BLOCKS)
    for call in ("save_pretrained", "perfkern.from_pretrained", "export_lora", "PerfkernCallback"):
        assert call in recipes


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(block, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "tests" / "data" / "compressed_tensors_llama", tmp_path / "llama-2of4-compressed-tensors")
    monkeypatch.chdir(tmp_path)
    example = _example()
    namespace = {"model": example.tiny_llama(), "train_dataset": example.Progressions(64, 12, seed=1)}
    with perfkern.use_backend("reference"), torch.random.fork_rng():
        exec(compile(block, "README.md", "exec"), namespace)
    if "export_lora" in block:
        ids = torch.randint(0, example.VOCAB, (2, 7))
        with torch.no_grad():
            torch.testing.assert_close(namespace["served"](ids).logits, namespace["model"](ids).logits)
    if "save_pretrained" in block:
        with torch.no_grad():
            ids = torch.randint(0, example.VOCAB, (2, 7))
            assert torch.equal(namespace["same"](ids).logits, namespace["model"](ids).logits)
