"""PERA (DESIGN §3.4): every backend against the reference, forward and all four gradients; the reference against
autograd and finite differences; the modules; the PEFT layer."""

import copy

import pytest
import torch
from tolerances import assert_within_torch_error
from torch import nn

import perfkern
from perfkern.ops import pera as ops
from perfkern.reference import pera as ref
from perfkern.reference import sparse24 as ref_sparse

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MODES = list(ref.MODES)
# (leading shape of x, N, K, r)
SHAPES = [
    pytest.param((1,), 16, 16, 1, id="M1-N16-K16-r1"),
    pytest.param((5,), 33, 48, 3, id="M5-N33-K48-r3"),
    pytest.param((2, 7), 40, 100, 5, id="M2x7-N40-K100-r5"),
    pytest.param((64,), 64, 128, 16, id="M64-N64-K128-r16"),
]


def _factors(n, k, r, mode, dtype, device):
    """A, B, h of PEFT's shapes, scaled so the adapter's output is O(1)."""
    a = torch.randn(r, k, device=device) / k**0.5
    b = torch.randn(n, r, device=device) / r**0.5
    h = torch.randn(ref.num_pairs(r, mode), device=device) * 2
    return a.to(dtype), b.to(dtype), h.to(dtype)


def test_design_example():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    ba = a @ a
    delta = perfkern.pera_delta_weight(a, a.clone(), torch.tensor([1.0, 2.0, 1.0]), 1.0, "full")
    assert torch.equal(delta, ba + ba * ba)


def test_pairs_follow_triu_order():
    i, j = ref.pairs(4, "full")
    ti, tj = torch.triu_indices(4, 4)
    assert torch.equal(i, ti) and torch.equal(j, tj)
    assert torch.equal(torch.stack(ref.pairs(4, "square")), torch.stack([torch.arange(4)] * 2))
    i, j = ref.pairs(4, "cross")
    assert (i < j).all() and len(i) == 6
    assert [ref.num_pairs(16, m) for m in MODES] == [136, 16, 120]


@pytest.mark.parametrize("mode", MODES)
def test_reference_backward_is_the_gradient(mode):
    """The closed-form backward equals autograd through the materialised factors (fp64), which in turn passes
    finite differences."""
    a, b, h = _factors(12, 20, 3, mode, torch.float64, "cpu")
    x = torch.randn(2, 4, 20, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, a, b, h)]
    assert torch.autograd.gradcheck(lambda *t: ref.pera_adapter(*t, scale=0.7, mode=mode), leaves)
    y = ref.pera_adapter(*leaves, scale=0.7, mode=mode)
    grad = torch.randn_like(y)
    expected = torch.autograd.grad(y, leaves, grad)
    for got, want in zip(ref.pera_adapter_backward(grad, x, a, b, h, 0.7, mode), expected, strict=True):
        torch.testing.assert_close(got, want)


def _torch_native(x, a, b, h, scale, mode, grad):
    """Plain PyTorch at the inputs' precision (materialised factors, two linears): the error yardstick."""
    leaves = [t.clone().requires_grad_(True) for t in (x, a, b, h)]
    i, j = ref.pairs(a.shape[0], mode, a.device)
    a_hat = torch.cat([leaves[1], leaves[3].unsqueeze(1) * leaves[1][i] * leaves[1][j]])
    b_hat = torch.cat([leaves[2], leaves[2][:, i] * leaves[2][:, j]], dim=1)
    y = scale * (leaves[0] @ a_hat.t()) @ b_hat.t()
    grads = torch.autograd.grad(y, leaves, grad, allow_unused=True)  # h is unused when the mode has no pairs
    return y, tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves, strict=True))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,n,k,r", SHAPES)
def test_forward_and_gradients_match_reference(backend, device, lead, n, k, r, dtype, mode):
    if not ops.ADAPTER.has(backend):
        pytest.skip(f"pera_adapter has no {backend} implementation")
    a, b, h = _factors(n, k, r, mode, dtype, device)
    x = torch.randn(*lead, k, device=device).to(dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, a, b, h)]
    y = perfkern.pera_adapter(*leaves, scale=0.5, mode=mode)
    assert perfkern.last_backend("pera_adapter") == backend
    grad = torch.randn_like(y)
    y.backward(grad)
    truth64 = [t.double() for t in (x, a, b, h)]
    native_y, native_grads = _torch_native(x, a, b, h, 0.5, mode, grad)
    assert_within_torch_error(y, ref.pera_adapter(*truth64, scale=0.5, mode=mode), native_y, "y")
    truths = ref.pera_adapter_backward(grad.double(), *truth64, scale=0.5, mode=mode)
    for name, leaf, truth, native in zip(["dx", "dA", "dB", "dh"], leaves, truths, native_grads, strict=True):
        assert_within_torch_error(leaf.grad, truth, native, name)


def test_bf16_operands_beyond_the_fp16_range(backend, device):
    """x of 2^17 and A of 2^-17 in bf16 (far outside fp16's range) must reach the dots as bf16: feeding them, or
    the generated factors, to the tensor cores as fp16 overflows. The interpreter rounds operands to the dot dtype
    as the GPU does, so that mistake fails on the CPU too."""
    if not ops.ADAPTER.has(backend):
        pytest.skip(f"pera_adapter has no {backend} implementation")
    big = 2.0**17
    a, b, h = _factors(24, 32, 3, "full", torch.bfloat16, device)
    a = a / big
    x = torch.randn(5, 32, device=device).to(torch.bfloat16) * big
    leaves = [t.clone().requires_grad_(True) for t in (x, a, b, h)]
    y = perfkern.pera_adapter(*leaves, scale=0.5, mode="full")
    grad = torch.randn_like(y)
    y.backward(grad)
    truth64 = [t.double() for t in (x, a, b, h)]
    native_y, native_grads = _torch_native(x, a, b, h, 0.5, "full", grad)
    assert_within_torch_error(y, ref.pera_adapter(*truth64, scale=0.5, mode="full"), native_y, "y")
    truths = ref.pera_adapter_backward(grad.double(), *truth64, scale=0.5, mode="full")
    for name, leaf, truth, native in zip(["dx", "dA", "dB", "dh"], leaves, truths, native_grads, strict=True):
        assert_within_torch_error(leaf.grad, truth, native, name)


@pytest.mark.parametrize("mode", MODES)
def test_delta_weight_is_the_adapter_as_a_matrix(backend, device, mode):
    if not ops.DELTA_WEIGHT.has(backend):
        pytest.skip(f"pera_delta_weight has no {backend} implementation")
    a, b, h = _factors(24, 32, 5, mode, torch.float32, device)
    x = torch.randn(6, 32, device=device)
    delta = perfkern.pera_delta_weight(a, b, h, 0.25, mode)
    torch.testing.assert_close(x @ delta.t(), perfkern.pera_adapter(x, a, b, h, 0.25, mode), atol=1e-5, rtol=1e-5)
    leaves = [t.clone().requires_grad_(True) for t in (a, b, h)]
    weights = torch.randn(24, 32, device=device)
    (perfkern.pera_delta_weight(*leaves, 0.25, mode) * weights).sum().backward()
    a64, b64, h64 = (t.double().requires_grad_(True) for t in (a, b, h))
    (ref.pera_delta_weight(a64, b64, h64, 0.25, mode) * weights.double()).sum().backward()
    for leaf, want in zip(leaves, (a64, b64, h64), strict=True):
        torch.testing.assert_close(leaf.grad, want.grad.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_zero_h_is_lora(device, mode):
    a, b, _ = _factors(24, 32, 4, mode, torch.float64, device)
    h = torch.zeros(ref.num_pairs(4, mode), dtype=torch.float64, device=device)
    x = torch.randn(5, 32, dtype=torch.float64, device=device)
    lora = 0.5 * (x @ a.t()) @ b.t()
    torch.testing.assert_close(ref.pera_adapter(x, a, b, h, 0.5, mode), lora, atol=1e-13, rtol=1e-13)
    # In fp32 only the summation order differs from LoRA's two products.
    got = perfkern.pera_adapter(x.float(), a.float(), b.float(), h.float(), 0.5, mode)
    torch.testing.assert_close(got, lora.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["pera_adapter", "pera_adapter_backward", "pera_delta_weight"])
def test_opcheck(device, name):
    a, b, h = _factors(16, 32, 3, "full", torch.float32, device)
    x = torch.randn(2, 3, 32, device=device)
    grads = {"pera_adapter": (0, 1, 3), "pera_delta_weight": (0, 2)}.get(name, ())
    grad, z = torch.randn(2, 3, 16, device=device), torch.randn(6, 9, device=device)
    args = {
        "pera_adapter": (x, a, b, h, 0.5, "full"),
        "pera_adapter_backward": (grad, x, a, b, h, z, 0.5, "full"),
        "pera_delta_weight": (a, b, h, 0.5, "full"),
    }[name]
    args = tuple(t.clone().requires_grad_(True) if i in grads else t for i, t in enumerate(args))
    torch.library.opcheck(getattr(torch.ops.perfkern, name).default, args)


def _bad_calls():
    a, b, h = _factors(16, 32, 4, "full", torch.float32, "cpu")
    x = torch.randn(3, 32)
    return [
        pytest.param(lambda: perfkern.pera_adapter(x, a, b, h, mode="quartic"), r"mode must be one of", id="mode"),
        pytest.param(lambda: perfkern.pera_adapter(x, a, b, h[:-1]), r"h must be \[\|P\|\] for r = 4", id="h"),
        pytest.param(lambda: perfkern.pera_adapter(x, a, b, h, mode="square"), r"= \[4\], got \[10\]", id="h-mode"),
        pytest.param(lambda: perfkern.pera_adapter(x, a, b[:, :3], h), r"lora_b must be \[N, r\] with r = 4", id="B"),
        pytest.param(lambda: perfkern.pera_adapter(x[:, :31], a, b, h), r"x must be \[..., K\] with K = 32", id="x"),
        pytest.param(lambda: perfkern.pera_adapter(x.int(), a, b, h), r"x must be float32, .* or float64", id="x-int"),
        pytest.param(lambda: perfkern.pera_adapter(x.double(), a, b, h), r"x must have lora_a's dtype", id="x-f64"),
        pytest.param(lambda: perfkern.pera_adapter(x, a, b.half(), h), r"lora_b must have lora_a's dtype", id="Bdt"),
        pytest.param(lambda: perfkern.pera_delta_weight(a[0], b, h), r"lora_a must be 2-D", id="A-rank"),
    ]


@pytest.mark.parametrize("call,message", _bad_calls())
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# The modules.


@pytest.mark.parametrize("mode", MODES)
def test_sparse_layer_with_pera(device, mode):
    torch.manual_seed(2)
    linear = nn.Linear(64, 32, device=device)
    layer = perfkern.SparseLoRALinear.from_linear(linear, rank=4, adapter="pera", pera_mode=mode)
    assert layer.lora_h.shape == (ref.num_pairs(4, mode),) and "pera(rank=4" in repr(layer)
    x = torch.randn(3, 64, device=device)
    before = layer(x)
    with torch.no_grad():
        layer.lora_b.normal_()
        layer.lora_h.normal_()
    torch.testing.assert_close(layer(x), before)  # lazy: the adapter costs nothing and changes nothing
    layer.enable_adapter()
    after = layer(x)
    expected = before + ref.pera_adapter(x, layer.lora_a, layer.lora_b, layer.lora_h, layer.scale, mode)
    torch.testing.assert_close(after, expected)
    after.sum().backward()
    assert layer.lora_h.grad is not None and layer.lora_h.grad.abs().sum() > 0
    torch.testing.assert_close(layer.to_linear()(x), after, atol=1e-5, rtol=1e-5)
    fresh = perfkern.SparseLoRALinear(64, 32, rank=4, adapter="pera", pera_mode=mode, device=device)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), after)


def test_dense_pera_linear(device):
    base = nn.Linear(48, 24, device=device)
    layer = perfkern.PeraLinear(base, rank=3, alpha=6, mode="square")
    assert not base.weight.requires_grad and layer.lora_h.shape == (3,)
    x = torch.randn(4, 48, device=device)
    torch.testing.assert_close(layer(x), base(x))  # B = 0 at init
    with torch.no_grad():
        layer.lora_b.normal_()
        layer.lora_h.normal_()
    torch.testing.assert_close(layer.to_linear()(x), layer(x), atol=1e-5, rtol=1e-5)
    layer.enable_adapter(False)
    torch.testing.assert_close(layer(x), base(x))


# PEFT.


class _TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _peft_model(base, mode="full", pera=True):
    peft = pytest.importorskip("peft")
    from perfkern.integrations.peft import register_pera

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"])
    if pera:
        register_pera(config, mode=mode)
    return peft.get_peft_model(copy.deepcopy(base), config), config


@pytest.mark.parametrize("mode", MODES)
def test_peft_layer_trains_merges_saves_and_loads(tmp_path, mode):
    peft = pytest.importorskip("peft")
    from perfkern.integrations.peft import register_pera

    torch.manual_seed(0)
    base = _TwoLayer()
    model, config = _peft_model(base, mode)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.model.fc1.lora_pera_h.default" in trainable
    assert all("lora_" in n for n in trainable)
    x = torch.randn(6, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    h = model.base_model.model.fc1.lora_pera_h["default"]
    assert h.abs().sum() > 0, "h trains once B is non-zero"
    y = model(x)
    merged = copy.deepcopy(model).merge_and_unload()
    assert type(merged.fc1) is nn.Linear
    torch.testing.assert_close(merged(x), y, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded_config = peft.LoraConfig.from_pretrained(tmp_path)
    register_pera(loaded_config, mode=mode)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, config=loaded_config)
    torch.testing.assert_close(loaded(x), y)


def test_peft_pera_with_zero_h_is_peft_lora():
    torch.manual_seed(0)
    base = _TwoLayer()
    pera, _ = _peft_model(base, pera=True)
    lora, _ = _peft_model(base, pera=False)
    lora.load_state_dict(pera.state_dict(), strict=False)
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            getattr(lora.base_model.model, name).lora_B["default"].weight.normal_()
            getattr(pera.base_model.model, name).lora_B["default"].weight.copy_(
                getattr(lora.base_model.model, name).lora_B["default"].weight
            )
    x = torch.randn(4, 32)
    torch.testing.assert_close(pera(x), lora(x), atol=1e-5, rtol=1e-5)


def _expanded(a, b, h, mode):
    """Â and B̂ written out pair by pair from DESIGN §3.4, independently of the reference's vectorised form."""
    r = a.shape[0]
    pairs = [(i, j) for i in range(r) for j in range(i, r) if {"full": True, "square": i == j, "cross": i < j}[mode]]
    a_hat = torch.cat([a] + [(h[p] * a[i] * a[j]).unsqueeze(0) for p, (i, j) in enumerate(pairs)])
    b_hat = torch.cat([b] + [(b[:, i] * b[:, j]).unsqueeze(1) for i, j in pairs], dim=1)
    return a_hat, b_hat


@pytest.mark.parametrize("module", ["sparse", "dense"])
@pytest.mark.parametrize(
    "rank,alpha,mode,expected_scale",
    [pytest.param(3, 6.0, "full", 2.0, id="r3-alpha6-full"), pytest.param(4, None, "cross", 1.0, id="r4-default-cross"),
     pytest.param(2, 1.0, "square", 0.5, id="r2-alpha1-square")],
)  # fmt: skip
def test_pera_scale_is_alpha_over_rank(device, module, rank, alpha, mode, expected_scale):
    """s = alpha / r with r the LoRA rank, never r + |P| (the expanded width), for both PERA modules; the number
    is written here, not read from the layer."""
    torch.manual_seed(3)
    linear = nn.Linear(64, 32, device=device)
    if module == "sparse":
        layer = perfkern.SparseLoRALinear.from_linear(
            linear, rank=rank, alpha=alpha, adapter="pera", pera_mode=mode, lazy=False
        )
        base = ref_sparse.decompress_2to4(layer.values.detach(), layer.meta)
    else:
        layer = perfkern.PeraLinear(linear, rank=rank, alpha=alpha, mode=mode)
        base = linear.weight.detach()
    with torch.no_grad():
        layer.lora_b.normal_()
        layer.lora_h.normal_()
    assert layer.scale == expected_scale
    a_hat, b_hat = _expanded(layer.lora_a.detach(), layer.lora_b.detach(), layer.lora_h.detach(), mode)
    x = torch.randn(5, 64, device=device)
    expected = x @ base.t() + linear.bias.detach() + expected_scale * (x @ a_hat.t()) @ b_hat.t()
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.to_linear().weight, base + expected_scale * b_hat @ a_hat, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_float64_gradcheck_of_the_registered_backward(mode):
    a, b, h = _factors(12, 20, 3, mode, torch.float64, "cpu")
    x = torch.randn(2, 4, 20, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, a, b, h)]
    with perfkern.use_backend("reference"):
        assert torch.autograd.gradcheck(
            lambda *t: perfkern.pera_adapter(*t, scale=0.7, mode=mode), leaves, fast_mode=True
        )
        assert torch.autograd.gradcheck(
            lambda *t: perfkern.pera_delta_weight(*t, 0.7, mode), leaves[1:], fast_mode=True
        )


def test_float64_pera_layers(device):
    torch.manual_seed(4)
    linear = nn.Linear(32, 16, device=device, dtype=torch.float64)
    for layer in (
        perfkern.PeraLinear(linear, rank=3, alpha=6),
        perfkern.SparseLoRALinear.from_linear(linear, rank=3, alpha=6, adapter="pera", lazy=False, backward="exact"),
    ):
        with torch.no_grad():
            layer.lora_b.normal_()
            layer.lora_h.normal_()
        x = torch.randn(5, 32, dtype=torch.float64, device=device, requires_grad=True)
        assert layer(x).dtype == torch.float64
        assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)
        torch.testing.assert_close(layer.to_linear()(x), layer(x), atol=1e-12, rtol=1e-12)
