"""Whole models: Hugging Face LLaMA and GPT-2 (tiny, built from config classes, no downloads) converted with
sparsify, trained, merged back for export; torch.compile, autocast, dtype moves and safetensors round trips."""

import copy

import pytest
import torch
from torch import nn

import perfkern
from perfkern.demo import TinyGPT
from perfkern.reference import sparse24 as ref

transformers = pytest.importorskip("transformers")


def _llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=128, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


def _tokens(batch=2, length=16):
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(1))


def test_llama_conversion_counts_and_training():
    model = _llama()
    skipped = perfkern.sparsify(model, rank=4, lazy=False)
    converted = [n for n, m in model.named_modules() if isinstance(m, perfkern.SparseLoRALinear)]
    assert len(converted) == 14 and not skipped  # q, k, v, o, gate, up, down in each of 2 layers
    assert not isinstance(model.lm_head, perfkern.SparseLoRALinear)
    ids = _tokens()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_gpt2_conv1d_conversion_equals_the_pruned_model():
    model = _gpt2().eval()
    pruned = copy.deepcopy(model)
    for module in pruned.modules():
        if type(module).__name__ == "Conv1D":
            w = module.weight.data.t()  # [out, in]
            module.weight.data = (w * ref.mask_2to4(w)).t().contiguous()
    skipped = perfkern.sparsify(model, rank=4)
    assert not skipped
    assert sum(isinstance(m, perfkern.SparseLoRALinear) for m in model.modules()) == 8
    ids = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, pruned(ids).logits, atol=1e-5, rtol=1e-5)


def test_merge_restores_the_original_classes():
    for build in (_llama, _gpt2):
        model = build().eval()
        names = dict(model.state_dict())
        perfkern.sparsify(model, rank=4, lazy=False, adapter="pera")
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, perfkern.SparseLoRALinear):
                    m.lora_b.normal_(std=0.02)
                    m.lora_h.normal_()
        ids = _tokens()
        with torch.no_grad():
            expected = model(ids).logits
        perfkern.merge(model)
        assert not any(isinstance(m, perfkern.SparseLoRALinear) for m in model.modules())
        merged = model.state_dict()
        assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in names.items()}
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_sparsify_reports_what_it_skips():
    model = nn.ModuleList([nn.Linear(20, 32), nn.Linear(32, 24), nn.Linear(32, 32)])
    skipped = perfkern.sparsify(model, rank=2)
    assert [(s.name, s.reason) for s in skipped] == [
        ("0", "in_features=20 is not a multiple of 16"),
        ("1", "out_features=24 is not a multiple of 16"),
    ]
    assert isinstance(model[2], perfkern.SparseLoRALinear)
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Linear


def _tiny_gpt():
    torch.manual_seed(0)
    model = TinyGPT(32, d=64, layers=1, context=16)
    perfkern.sparsify(model, rank=4, lazy=False, adapter="pera")
    return model


def test_compile_without_graph_breaks():
    model = _tiny_gpt()
    x = torch.randint(0, 32, (2, 16))
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager = copy.deepcopy(model)
    out = compiled(x)
    torch.testing.assert_close(out, eager(x))
    out.square().mean().backward()
    eager(x).square().mean().backward()
    layer, eager_layer = model.blocks[0].qkv, eager.blocks[0].qkv
    torch.testing.assert_close(layer.values.grad, eager_layer.values.grad)
    torch.testing.assert_close(layer.lora_h.grad, eager_layer.lora_h.grad)


def test_autocast_bf16():
    model = _tiny_gpt()
    x = torch.randint(0, 32, (2, 16))
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16
    layer = model.blocks[0].fc
    assert layer.values.grad.dtype == torch.float32 and layer.lora_a.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.1)


def test_model_to_dtype_keeps_the_format():
    model = _tiny_gpt().to(torch.bfloat16)
    layer = model.blocks[0].out
    assert (
        layer.values.dtype == torch.bfloat16 and layer.meta.dtype == torch.int16 and layer.bwd_meta.dtype == torch.int16
    )
    assert layer.adapter_enabled.dtype == torch.bool and layer.adapter_active
    x = torch.randint(0, 32, (2, 16))
    assert model(x).dtype == torch.bfloat16


def test_safetensors_round_trip(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = _tiny_gpt()
    with torch.no_grad():
        model.blocks[0].qkv.lora_b.normal_()
    path = tmp_path / "model.safetensors"
    safetensors.save_model(model, str(path))
    fresh = _tiny_gpt()
    fresh.blocks[0].fc.enable_adapter(False)
    safetensors.load_model(fresh, str(path))
    assert fresh.blocks[0].fc.adapter_active  # the switch follows the loaded state
    x = torch.randint(0, 32, (2, 16))
    torch.testing.assert_close(fresh(x), model(x))
