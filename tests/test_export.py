"""Adapters out as one plain PEFT LoRA (DESIGN §7): ``export_lora`` + ``merge(model, adapters=False)`` give back
the adapted model in PEFT; PERA goes out as its exact LoRA of rank r + |P|; ``max_rank`` truncates by SVD."""

import copy
import json

import pytest
import torch
from tolerances import assert_close
from torch import nn

import perfkern
from perfkern.reference import sparse24 as ref
from perfkern.reference.pera import num_pairs

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")


@pytest.fixture(autouse=True)
def _reference_backend():
    with perfkern.use_backend("reference"):  # whole models on a CPU; the kernels have their own tests
        yield


def _llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=96,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=96)).eval()


def _adapted(model, **kwargs):
    perfkern.sparsify(model, lazy=False, **kwargs)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, perfkern.SparseLoRALinear | perfkern.PeraLinear) and layer.adapter is not None:
                layer.lora_b.normal_(std=0.05)
                if layer.lora_h is not None:
                    layer.lora_h.normal_()
    return model


def _ids():
    return torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))


def _peft_logits(model, directory):
    base = perfkern.merge(copy.deepcopy(model), adapters=False)
    with torch.no_grad():
        return peft.PeftModel.from_pretrained(base, directory).eval()(_ids()).logits


@pytest.mark.parametrize(
    "build, kwargs",
    [
        pytest.param(_llama, {"rank": 4, "alpha": 8, "adapter": "lora"}, id="llama-lora"),
        pytest.param(_llama, {"rank": 4, "alpha": 2, "adapter": "pera", "pera_mode": "full"}, id="llama-pera-full"),
        pytest.param(_llama, {"rank": 3, "adapter": "pera", "pera_mode": "square"}, id="llama-pera-square"),
        pytest.param(_gpt2, {"rank": 4, "alpha": 8, "adapter": "pera", "pera_mode": "cross"}, id="gpt2-conv1d-pera"),
    ],
)
def test_peft_on_the_merged_base_reproduces_the_model(tmp_path, build, kwargs):
    model = _adapted(build(), **kwargs)
    with torch.no_grad():
        expected = model(_ids()).logits
    layers = perfkern.export_lora(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] == (build is _gpt2)
    pairs = num_pairs(kwargs["rank"], kwargs.get("pera_mode", "full")) if kwargs["adapter"] == "pera" else 0
    assert {layer.rank for layer in layers} == {kwargs["rank"] + pairs} and config["r"] == kwargs["rank"] + pairs
    # PEFT's scale alpha / r is the layer's alpha / rank (the LoRA rank r, never r + |P|).
    assert config["lora_alpha"] / config["r"] == pytest.approx(kwargs.get("alpha", kwargs["rank"]) / kwargs["rank"])
    assert_close(_peft_logits(model, tmp_path), expected)


def test_exported_factors_are_the_adapter_exactly(tmp_path):
    """B'·A'·alpha/r of every exported layer is the layer's ΔW = s·B̂·Â (from pera_delta_weight, independent of the
    exporter), and PERA's exact rank is r + r(r+1)/2: 152 at r = 16."""
    torch.manual_seed(0)
    layer = perfkern.SparseLoRALinear(64, 48, rank=16, alpha=4, adapter="pera", lazy=False)
    with torch.no_grad():
        layer.lora_b.normal_()
        layer.lora_h.normal_()
    (exported,) = perfkern.export_lora(nn.ModuleDict({"proj": layer}), tmp_path)
    assert exported.rank == 152 == 16 + num_pairs(16, "full") and 64 + num_pairs(64, "full") == 2144
    factors = safetensors.load_file(str(tmp_path / "adapter_model.safetensors"))
    a, b = factors["base_model.model.proj.lora_A.weight"], factors["base_model.model.proj.lora_B.weight"]
    assert a.shape == (152, 64) and b.shape == (48, 152)
    delta = perfkern.pera_delta_weight(layer.lora_a, layer.lora_b, layer.lora_h, 4 / 16, "full")
    assert_close(exported.alpha / exported.rank * (b @ a), delta.detach())


def test_lazy_adapters_are_left_out_and_ranks_may_differ(tmp_path):
    model = _llama()
    perfkern.sparsify(model, rank=4, alpha=4, include=["*.self_attn.*"], lazy=False)
    perfkern.sparsify(model, rank=2, alpha=8, include=["*.mlp.gate_proj", "*.mlp.up_proj"], lazy=False)
    perfkern.sparsify(model, rank=2, include=["*.mlp.down_proj"], lazy=True)
    _adapted(model, rank=1)  # nothing left to convert; the adapters get non-zero factors
    with torch.no_grad():
        expected = model(_ids()).logits
    layers = perfkern.export_lora(model, tmp_path)
    assert not any(layer.name.endswith("down_proj") for layer in layers)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (
        config["r"] == 4
        and set(config["rank_pattern"].values()) == {2}
        and set(config["alpha_pattern"].values()) == {8.0}
    )
    assert_close(_peft_logits(model, tmp_path), expected)


def test_max_rank_exports_the_best_rank_k_approximation(tmp_path):
    model = _adapted(_llama(), rank=4, adapter="pera")
    layers = perfkern.export_lora(model, tmp_path, max_rank=6)
    factors = safetensors.load_file(str(tmp_path / "adapter_model.safetensors"))
    for layer in layers:
        dense = model.get_submodule(layer.name)
        delta = (dense.merged_weight() - dense.merged_weight(adapters=False)).double()
        singular = torch.linalg.svdvals(delta)
        assert layer.rank == 6
        assert layer.relative_error == pytest.approx(
            (singular[6:].square().sum() / singular.square().sum()).sqrt().item(), rel=1e-3
        )
        a = factors[f"base_model.model.{layer.name}.lora_A.weight"].double()
        b = factors[f"base_model.model.{layer.name}.lora_B.weight"].double()
        residual = torch.linalg.matrix_norm(delta - layer.alpha / layer.rank * b @ a) / torch.linalg.matrix_norm(delta)
        assert residual.item() == pytest.approx(layer.relative_error, rel=1e-3, abs=1e-6)
    exact = perfkern.export_lora(model, tmp_path / "exact", max_rank=14)
    assert {(layer.rank, layer.relative_error) for layer in exact} == {(14, 0.0)}


def test_dense_pera_linear_exports_onto_its_base(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(perfkern.PeraLinear(nn.Linear(32, 16), rank=3, alpha=6), nn.ReLU())
    with torch.no_grad():
        model[0].lora_b.normal_()
        model[0].lora_h.normal_()
    x = torch.randn(5, 32)
    expected = model(x)
    perfkern.export_lora(model, tmp_path)
    base = perfkern.merge(copy.deepcopy(model), adapters=False)
    assert type(base[0]) is nn.Linear and torch.equal(base[0].weight, model[0].base.weight)
    with torch.no_grad():
        assert_close(peft.PeftModel.from_pretrained(base, tmp_path)(x), expected)


def test_merge_without_adapters_is_the_sparse_base():
    model = _adapted(_gpt2(), rank=4)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, perfkern.SparseLoRALinear)}
    merged = perfkern.merge(copy.deepcopy(model), adapters=False)
    for name, layer in layers.items():
        conv = merged.get_submodule(name)
        assert type(conv).__name__ == "Conv1D"
        assert torch.equal(conv.weight.t(), ref.decompress_2to4(layer.values.detach(), layer.meta))


def test_export_refuses_what_one_adapter_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="no active adapter"):
        perfkern.export_lora(_adapted(_llama(), rank=0, adapter=None), tmp_path)
    mixed = nn.ModuleDict({"a": perfkern.SparseLoRALinear(64, 32, lazy=False), "b": perfkern.SparseLoRALinear(64, 32)})
    mixed["b"].enable_adapter()
    mixed["a"].dense_origin = type(_gpt2().transformer.h[0].attn.c_attn)
    with pytest.raises(ValueError, match="mixes Conv1D and nn.Linear"):
        perfkern.export_lora(mixed, tmp_path)
    with pytest.raises(ValueError, match="max_rank must be >= 1"):
        perfkern.export_lora(mixed, tmp_path, max_rank=0)
