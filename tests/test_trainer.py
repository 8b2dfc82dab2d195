"""``PerfkernCallback`` in Hugging Face ``Trainer`` (DESIGN §7), through ``examples/trainer_slope.py``: the lazy
adapters switch on at their fraction of the steps, backward masks refresh per optimizer step under gradient
accumulation, the dendrite cycle runs on evaluation plateaus, and each event reaches the Trainer's log."""

import importlib.util
from pathlib import Path

import pytest

import perfkern

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trainer_slope.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("trainer_slope", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _reference_backend():
    with perfkern.use_backend("reference"):  # as on a CPU outside the test suite (no Triton interpreter)
        yield


def test_adapters_switch_late_and_masks_refresh_per_optimizer_step(example, tmp_path):
    trainer, callback = example.train(steps=12, accumulation=3, output_dir=str(tmp_path))
    layers = [m for m in trainer.model.modules() if isinstance(m, perfkern.SparseLoRALinear)]
    assert len(layers) == 7
    # 12 optimizer steps of 3 micro-batches each: 12 counts, a refresh at the 5th and 10th.
    assert {int(layer.updates) for layer in layers} == {12}
    refreshes = [e for e in callback.events if "backward masks re-chosen in 7 layers" in e]
    assert refreshes == [
        "step 5: backward masks re-chosen in 7 layers",
        "step 10: backward masks re-chosen in 7 layers",
    ]
    # adapter_start=0.75: on before step 10 (after 9 of 12), B trained from zero since.
    assert "step 9: adapters on in 7 layers after 9 of 12 steps" in callback.events
    assert all(layer.adapter_active and layer.lora_b.abs().sum() > 0 for layer in layers)
    logged = [entry for entry in trainer.state.log_history if "perfkern" in entry]
    assert [f"step {e['step']}: {e['perfkern']}" for e in logged] == callback.events
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert losses[-1] < 0.9 * losses[0]


def test_dendrite_cycle_on_evaluation_plateaus(example, tmp_path):
    trainer, callback = example.train(steps=16, accumulation=1, dendrites=True, output_dir=str(tmp_path))
    events = " | ".join(callback.events)
    assert "dendrite phase in 1 layers (base frozen)" in events and "dendrites installed, per layer [1]" in events
    (layer,) = [m for m in trainer.model.modules() if isinstance(m, perfkern.dendrites.DendriteLayer)]
    assert layer.num_dendrites == events.count("dendrites installed") >= 1
    installed = layer.dendrites[0].w
    assert any(installed is p for group in trainer.optimizer.param_groups for p in group["params"])
    assert installed.abs().sum() > 0, "the installed dendrite's output weight trains after the phase"
    # The dropped candidates left the optimizer with their state: it holds the model's parameters only.
    in_model = {id(p) for p in trainer.model.parameters()}
    assert all(id(p) in in_model for group in trainer.optimizer.param_groups for p in group["params"])
    assert all(id(p) in in_model for p in trainer.optimizer.state)
    # The base trained outside the dendrite phase only: fewer optimizer steps counted than taken.
    sparse = [m for m in trainer.model.modules() if isinstance(m, perfkern.SparseLoRALinear)]
    assert 0 < int(sparse[0].updates) < 16


def test_callback_checks_its_arguments():
    from perfkern.integrations.transformers import PerfkernCallback

    with pytest.raises(ValueError, match="adapter_start must be a fraction"):
        PerfkernCallback(adapter_start=1.5)
    with pytest.raises(ValueError, match=r"unknown dendrite options \['patince'\]"):
        PerfkernCallback(dendrites={"patince": 2})
