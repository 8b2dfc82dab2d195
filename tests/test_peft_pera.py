"""PERA in PEFT (DESIGN §4), where it meets the rest of PEFT: GPT-2 ``Conv1D`` targets, adapters of other kinds in
the same model, ``add_weighted_adapter``, loading without ``register_pera``, float64 models, and PEFT's scale.

Expected values come from a hand-written expansion (``_delta``), not from the layer or perfkern's functions."""

import copy

import pytest
import torch
from tolerances import assert_close
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from perfkern.integrations.peft import PeraLoraLinear, register_pera  # noqa: E402


@pytest.fixture(autouse=True)
def _reference_backend():
    import perfkern

    with perfkern.use_backend("reference"):
        yield


def _pairs(r: int, mode: str) -> list[tuple[int, int]]:
    keep = {"full": lambda i, j: i <= j, "square": lambda i, j: i == j, "cross": lambda i, j: i < j}[mode]
    return [(i, j) for i in range(r) for j in range(i, r) if keep(i, j)]


def _delta(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor | None, scale: float, mode: str | None) -> torch.Tensor:
    """s·(B·A + Σ_p h_p (b_i ⊙ b_j)(a_i ⊙ a_j)ᵀ), term by term in float64 (DESIGN §3.4)."""
    a, b = a.double(), b.double()
    delta = b @ a
    for p, (i, j) in enumerate(_pairs(a.shape[0], mode) if mode else []):
        delta = delta + h[p].double() * torch.outer(b[:, i] * b[:, j], a[i] * a[j])
    return scale * delta


class _TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _randomise(model: nn.Module, adapter: str = "default") -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PeraLoraLinear) and adapter in m.lora_A:
                m.lora_B[adapter].weight.normal_(std=0.3)
                if adapter in m.lora_pera_h:
                    m.lora_pera_h[adapter].normal_()


def _factors(layer, adapter="default"):
    h = layer.lora_pera_h[adapter] if adapter in layer.lora_pera_h else None
    return layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach(), h


def _config(**kwargs):
    return peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["fc1", "fc2"], **kwargs})


def test_gpt2_conv1d_targets_get_pera_with_fan_in_fan_out(tmp_path):
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=40)).eval()
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    register_pera(config, mode="full")
    model = peft.get_peft_model(copy.deepcopy(base), config)
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer, PeraLoraLinear) and layer.fan_in_fan_out and "default" in layer.lora_pera_h
    _randomise(model)
    a, b, h = _factors(layer)
    x = torch.randn(5, 32)
    conv = layer.get_base_layer()
    assert_close(layer(x) - conv(x), (x.double() @ _delta(a, b, h, 2.0, "full").t()).float())
    ids = torch.randint(0, 40, (2, 6))
    with torch.no_grad():
        expected = model(ids).logits
        merged = copy.deepcopy(model).merge_and_unload()
        assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
        assert_close(merged(ids).logits, expected)
    model.save_pretrained(tmp_path)
    loaded_config = peft.LoraConfig.from_pretrained(tmp_path)
    register_pera(loaded_config)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, config=loaded_config)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)


def test_a_pera_adapter_on_plain_lora_layers_raises():
    model = peft.get_peft_model(_TwoLayer(), _config())
    pera = _config()
    register_pera(pera)
    with pytest.raises(ValueError, match="plain PEFT LoRA layers cannot hold; call .*register_pera"):
        model.add_adapter("pera", pera)


def test_loading_a_pera_adapter_without_register_pera_raises(tmp_path):
    torch.manual_seed(0)
    base = _TwoLayer()
    config = _config()
    register_pera(config, mode="cross")
    model = peft.get_peft_model(copy.deepcopy(base), config)
    _randomise(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"PERA \(perfkern, mode=cross.*register_pera\(config\)"):
        peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    loaded_config = peft.LoraConfig.from_pretrained(tmp_path)
    register_pera(loaded_config)  # the mode comes from the saved config
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, config=loaded_config)
    assert loaded.base_model.model.fc1.pera_modes == {"default": "cross"}
    x = torch.randn(3, 32)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="records a PERA adapter of mode 'cross', not 'full'"):
        register_pera(peft.LoraConfig.from_pretrained(tmp_path), mode="full")


def test_adapters_of_other_kinds_keep_their_kind():
    torch.manual_seed(0)
    full = _config()
    register_pera(full, mode="full")
    model = peft.get_peft_model(_TwoLayer(), full)
    square = _config(r=3, lora_alpha=3)
    register_pera(square, mode="square")
    model.add_adapter("square", square)
    model.add_adapter("plain", _config(r=2, lora_alpha=4))
    layer = model.base_model.model.fc1
    x = torch.randn(4, 32)
    for name, scale, mode in (("square", 1.0, "square"), ("plain", 2.0, None)):
        _randomise(model, name)
        model.set_adapter(name)
        a, b, h = _factors(layer, name)
        got = layer(x) - layer.get_base_layer()(x)
        assert_close(
            got, (x.double() @ _delta(a, b, h[: 3 if mode else 0] if h is not None else None, scale, mode).t()).float()
        )
        assert_close(layer.get_delta_weight(name), _delta(a, b, h, scale, mode).float())
    assert layer.pera_modes == {"default": "full", "square": "square", "plain": None}
    assert layer.lora_pera_h["square"].numel() == 3 and "plain" not in layer.lora_pera_h


@pytest.mark.parametrize("second_mode", ["full", "square"])
def test_cat_combines_pera_adapters_exactly(second_mode):
    torch.manual_seed(0)
    first = _config(r=3, lora_alpha=6)
    register_pera(first, mode="full")
    model = peft.get_peft_model(_TwoLayer(), first)
    second = _config(r=2, lora_alpha=1)
    register_pera(second, mode=second_mode)
    model.add_adapter("second", second)
    for name in ("default", "second"):
        _randomise(model, name)
    weights = [0.7, -1.3]
    model.add_weighted_adapter(["default", "second"], weights, "both", combination_type="cat")
    for layer in (model.base_model.model.fc1, model.base_model.model.fc2):
        want = weights[0] * _delta(*_factors(layer, "default"), 2.0, "full") + weights[1] * _delta(
            *_factors(layer, "second"), 0.5, second_mode
        )
        assert_close(layer.get_delta_weight("both").double(), want, torch.float32)
        assert layer.pera_modes["both"] == "full"


def test_svd_combinations_work_and_linear_ones_raise():
    torch.manual_seed(0)
    config = _config(r=2, lora_alpha=2)
    register_pera(config)
    model = peft.get_peft_model(_TwoLayer(), config)
    model.add_adapter("other", config)
    for name in ("default", "other"):
        _randomise(model, name)
    layer = model.base_model.model.fc1
    want = 0.5 * _delta(*_factors(layer), 1.0, "full") + 2.0 * _delta(*_factors(layer, "other"), 1.0, "full")
    # At full rank the SVD reproduces the combined ΔW, as a plain LoRA.
    model.add_weighted_adapter(["default", "other"], [0.5, 2.0], "svd", combination_type="svd", svd_rank=16)
    assert_close(layer.get_delta_weight("svd").double(), want, torch.float32)
    assert layer.pera_modes["svd"] is None
    # One adapter (PEFT combines it with "linear"): an exact PERA copy.
    model.add_weighted_adapter(["other"], [3.0], "single", combination_type="svd")
    assert layer.pera_modes["single"] == "full"
    assert_close(
        layer.get_delta_weight("single").double(), 3.0 * _delta(*_factors(layer, "other"), 1.0, "full"), torch.float32
    )
    with pytest.raises(ValueError, match="combination_type='linear'.*loses their polynomial terms"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "mixed", combination_type="linear")


def test_float64_models_work():
    torch.manual_seed(0)
    base = _TwoLayer().double()
    config = _config()
    register_pera(config)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    _randomise(model)
    layer = model.base_model.model.fc1
    a, b, h = _factors(layer)
    assert a.dtype == h.dtype == torch.float64
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    torch.testing.assert_close(out - layer.get_base_layer()(x), x @ _delta(a, b, h, 2.0, "full").t())
    out.sum().backward()
    assert layer.lora_pera_h["default"].grad.dtype == torch.float64
    merged = copy.deepcopy(model).merge_and_unload()
    torch.testing.assert_close(merged(x), model(x))
    small = _config(r=2, lora_alpha=2, target_modules=["0"])
    register_pera(small)
    tiny = peft.get_peft_model(nn.Sequential(nn.Linear(4, 3)).double(), small)
    _randomise(tiny)
    probe = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tiny(t), (probe,))


@pytest.mark.parametrize("rslora", [False, True], ids=["alpha-over-r", "rslora-alpha-over-sqrt-r"])
def test_peft_scale_is_alpha_over_r_as_peft_defines_it(rslora):
    """s = alpha / r (alpha / √r with use_rslora), r the LoRA rank (never r + |P|)."""
    torch.manual_seed(0)
    config = _config(r=4, lora_alpha=8, use_rslora=rslora)
    register_pera(config)
    model = peft.get_peft_model(_TwoLayer(), config)
    _randomise(model)
    layer = model.base_model.model.fc2
    x = torch.randn(5, 48)
    scale = 8 / 2 if rslora else 8 / 4
    want = x.double() @ _delta(*_factors(layer), scale, "full").t()
    assert_close(layer(x) - layer.get_base_layer()(x), want.float())
    assert_close(layer.get_delta_weight("default"), _delta(*_factors(layer), scale, "full").float())
