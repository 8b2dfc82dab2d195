"""Whole models: Hugging Face LLaMA and GPT-2 (tiny, built from config classes, no downloads) converted with
sparsify, trained, merged back for export; torch.compile, autocast, dtype moves and safetensors round trips."""

import copy

import pytest
import torch
from tolerances import TOLERANCES, assert_bits_equal, assert_close
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
    """One block, every projection 2:4 with a PERA adapter switched on and every adapter factor non-zero and
    large enough that the adapter (its second-order terms included) moves the logits far beyond bf16's
    tolerance: the tests below compare the adapter's arithmetic, not zeros."""
    torch.manual_seed(0)
    model = TinyGPT(32, d=64, layers=1, context=16)
    perfkern.sparsify(model, rank=4, lazy=False, adapter="pera")
    with torch.no_grad():
        for layer in _sparse_layers(model):
            layer.lora_a.normal_(std=0.2)
            layer.lora_b.normal_(std=0.2)
            layer.lora_h.normal_()
    return model


def _sparse_layers(model):
    return [m for m in model.modules() if isinstance(m, perfkern.SparseLoRALinear)]


TRAINED = ("values", "bias", "lora_a", "lora_b", "lora_h")


def _grads(model) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{name}": getattr(layer, name).grad for i, layer in enumerate(_sparse_layers(model)) for name in TRAINED
    }


def _loss(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().square().mean()


def test_adapters_of_the_tiny_gpt_matter():
    """The premise of the comparisons below: the adapters, and PERA's h alone, change the logits by far more than
    the bf16 tolerance, and every trained tensor gets a non-zero gradient."""
    model = _tiny_gpt()
    x = torch.randint(0, 32, (2, 16))
    logits = model(x)
    _loss(logits).backward()
    for name, grad in _grads(model).items():
        assert grad is not None and grad.abs().max() > 0, name
    no_h = copy.deepcopy(model)
    with torch.no_grad():
        for layer in _sparse_layers(no_h):
            layer.lora_h.zero_()
    bound = TOLERANCES[torch.bfloat16]["atol"] * 10
    assert (no_h(x) - logits).abs().max() > bound
    for layer in _sparse_layers(no_h):
        layer.enable_adapter(False)
    assert (no_h(x) - logits).abs().max() > bound


def test_compile_without_graph_breaks():
    model = _tiny_gpt()
    x = torch.randint(0, 32, (2, 16))
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager = copy.deepcopy(model)
    out, expected = compiled(x), eager(x)
    assert_close(out, expected)
    _loss(out).backward()
    _loss(expected).backward()
    want = _grads(eager)
    for name, grad in _grads(model).items():
        assert want[name].abs().max() > 0, name
        assert_close(grad, want[name])


def _relative(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return t.float() / scale.abs().max().float()


def test_autocast_bf16():
    """Under autocast the layers compute in bf16 (fp32 accumulation): logits and every gradient within bf16's
    tolerance of the fp32 model (gradients relative to their largest entry), adapters included."""
    model = _tiny_gpt()
    fp32 = copy.deepcopy(model)
    x = torch.randint(0, 32, (2, 16))
    reference = fp32(x)
    _loss(reference).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        _loss(out).backward()
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), reference, torch.bfloat16)
    want = _grads(fp32)
    for name, grad in _grads(model).items():
        assert grad.dtype == torch.float32, name
        assert_close(_relative(grad, want[name]), _relative(want[name], want[name]), torch.bfloat16)


def test_model_to_dtype_keeps_the_format():
    """model.to(bf16) rounds the kept values, keeps the metadata and the adapter switch, and the bf16 model's
    logits stay within bf16's tolerance of the fp32 model's."""
    fp32 = _tiny_gpt()
    model = copy.deepcopy(fp32).to(torch.bfloat16)
    for layer, original in zip(_sparse_layers(model), _sparse_layers(fp32), strict=True):
        assert_bits_equal(layer.values.detach(), original.values.detach().to(torch.bfloat16))
        assert_bits_equal(layer.meta, original.meta)
        assert_bits_equal(layer.bwd_meta, original.bwd_meta)
        assert_bits_equal(layer.lora_h.detach(), original.lora_h.detach().to(torch.bfloat16))
        assert layer.adapter_enabled.dtype == torch.bool and layer.adapter_active
    x = torch.randint(0, 32, (2, 16))
    out = model(x)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), fp32(x), torch.bfloat16)


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
