"""The 2:4 sparse linear layer with a low-rank adapter (DESIGN §3.3, §4): every backend against the reference,
forward and every gradient; the module's behaviour; bad input."""

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_within_torch_error
from torch import nn

import perfkern
from perfkern import sparsity
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (leading shape of x, N, K, r); r = 0 means no adapter.
SHAPES = [
    pytest.param((1,), 16, 16, 1, id="M1-N16-K16-r1"),
    pytest.param((5,), 33, 48, 3, id="M5-N33-K48-r3"),
    pytest.param((2, 7), 48, 64, 5, id="M2x7-N48-K64-r5"),
    pytest.param((17,), 64, 128, 16, id="M17-N64-K128-r16"),
    pytest.param((3, 11), 40, 96, 0, id="M3x11-N40-K96-nolora"),
]
DOUBLE_SHAPES = [
    pytest.param((1,), 16, 16, 1, id="M1-N16-K16-r1"),
    pytest.param((2, 7), 48, 64, 5, id="M2x7-N48-K64-r5"),
    pytest.param((17,), 64, 128, 0, id="M17-N64-K128-nolora"),
]


def _problem(lead, n, k, r, dtype, device, double=False):
    """Inputs of one call, scaled so outputs are O(1) in every dtype."""
    w = torch.randn(n, k, device=device) / k**0.5
    values, meta = ref.compress_2to4(torch.where(ref.mask_2to4(w), w, 0.0).to(dtype))
    args = {
        "x": torch.randn(*lead, k, device=device).to(dtype),
        "values": values,
        "meta": meta,
        "bias": torch.randn(n, device=device).to(dtype),
        "lora_a": torch.randn(r, k, device=device).to(dtype) / k**0.5 if r else None,
        "lora_b": torch.randn(n, r, device=device).to(dtype) if r else None,
        "scale": 0.5,
    }
    if double:
        _, bwd_mask = ref.double_mask_2to4(w)
        bwd_values, bwd_meta = ref.compress_2to4(torch.where(bwd_mask, w, 0.0).t().contiguous().to(dtype))
        args.update(bwd_values=bwd_values, bwd_meta=bwd_meta)
    return args


def _ref_grads(args, grad):
    return ref.sparse24_linear_backward(
        grad,
        args["x"],
        args["values"],
        args["meta"],
        args["lora_a"],
        args["lora_b"],
        args["scale"],
        args.get("bwd_values"),
        args.get("bwd_meta"),
    )


def _torch_native(args, grad):
    """The same forward and gradients in plain PyTorch at the inputs' precision: the error yardstick."""
    x, bias, a, b, s = args["x"], args["bias"], args["lora_a"], args["lora_b"], args["scale"]
    w = ref.decompress_2to4(args["values"], args["meta"])
    x2, dy = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    y = F.linear(x2, w, bias)
    w_bwd = w if args.get("bwd_values") is None else ref.decompress_2to4(args["bwd_values"], args["bwd_meta"]).t()
    dx = dy @ w_bwd
    d_a = d_b = None
    if a is not None:
        y = y + s * F.linear(F.linear(x2, a), b)
        dx = dx + s * (dy @ b) @ a
        d_a, d_b = s * (dy @ b).t() @ x2, s * dy.t() @ (x2 @ a.t())
    d_values = ref.gather_2to4(dy.t() @ x2, args["meta"])
    return y.view(grad.shape), (dx.view(x.shape), d_values, dy.sum(0), d_a, d_b)


def _check_against_reference(args, dtype):
    trainable = ["x", "values", "bias", "lora_a", "lora_b"]
    leaves = {name: args[name].clone().requires_grad_(True) for name in trainable if args[name] is not None}
    y = perfkern.sparse24_linear(**{**args, **leaves})
    ref_args = {name: args[name] for name in ("x", "values", "meta", "bias", "lora_a", "lora_b", "scale")}
    grad = torch.randn_like(y)
    native_y, native_grads = _torch_native(args, grad)
    truth_args = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in args.items()}
    assert_within_torch_error(y, ref.sparse24_linear(**{k: truth_args[k] for k in ref_args}), native_y, "y")
    y.backward(grad)
    truths = _ref_grads(truth_args, grad.float())
    for name, truth, native in zip(trainable, truths, native_grads, strict=True):
        if name in leaves:
            assert_within_torch_error(leaves[name].grad, truth, native, f"d{name}")


def _skip_unless_layer_backend(backend, args):
    missing = [impls.name for impls in (ops.MM, ops.WEIGHT_GRAD) if not impls.has(backend)]
    if missing:
        pytest.skip(f"{', '.join(missing)} has no {backend} implementation (sparse24_mm is tested on its own)")
    if backend == "cuda":
        # The layer's products through the sparse tensor cores: x·Wsᵀ over K and, with a backward copy, dy·Wbwd
        # over N (each is tested on its own where the CUDA kernels cannot take it).
        x = args["x"].reshape(-1, args["x"].shape[-1])
        dy = x.new_empty((1, args["values"].shape[0])) if args.get("bwd_meta") is not None else x
        reason = ops.cuda_mm_unsupported(x) or ops.cuda_mm_unsupported(dy)
        if reason is not None:
            pytest.skip(reason)


MM_SHAPES = [
    pytest.param(1, 16, 32, 1, id="M1-N16-K32-r1"),
    pytest.param(5, 33, 64, 3, id="M5-N33-K64-r3"),
    pytest.param(17, 70, 96, 0, id="M17-N70-K96-nolora"),
    pytest.param(40, 128, 128, 20, id="M40-N128-K128-r20"),
    pytest.param(130, 257, 320, 16, id="M130-N257-K320-r16"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,r", MM_SHAPES)
def test_sparse_mm_matches_reference(backend, device, m, n, k, r, dtype):
    """The fused product itself, on every backend that has it (the CUDA sparse-tensor-core kernel included),
    with a transposed view for B as the double-pruned dx passes it."""
    if backend == "triton" and device.type == "cpu" and max(m, n, k) > 128:
        pytest.skip("too large for the Triton interpreter")
    x = torch.randn(m, k, device=device).to(dtype)
    values, meta = ref.compress_2to4((torch.randn(n, k, device=device) / k**0.5).to(dtype))
    if backend == "cuda" and (reason := ops.cuda_mm_unsupported(x)) is not None:
        with pytest.raises(perfkern.BackendUnavailableError, match="cuda sparse24_mm"):
            torch.ops.perfkern.sparse24_mm(x, values, meta, None, None, None, 1.0)
        pytest.skip(reason)
    bias = torch.randn(n, device=device).to(dtype)
    lora_t = torch.randn(m, r, device=device).to(dtype) if r else None
    lora_b = torch.randn(r, n, device=device).to(dtype).t() if r else None  # a transposed view, strides (1, n)
    y = torch.ops.perfkern.sparse24_mm(x, values, meta, bias, lora_t, lora_b, 0.5)
    assert perfkern.last_backend("sparse24_mm") == backend
    w = ref.decompress_2to4(values, meta)
    truth = x.double() @ w.double().t() + bias.double()
    native = x @ w.t() + bias
    if r:
        truth = truth + 0.5 * lora_t.double() @ lora_b.double().t()
        native = native + 0.5 * lora_t @ lora_b.t()
    assert_within_torch_error(y, truth, native, "y")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,n,k,r", SHAPES)
def test_forward_and_gradients_match_reference(backend, device, lead, n, k, r, dtype):
    args = _problem(lead, n, k, r, dtype, device)
    _skip_unless_layer_backend(backend, args)
    _check_against_reference(args, dtype)
    assert perfkern.last_backend("sparse24_weight_grad") == backend


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,n,k,r", DOUBLE_SHAPES)
def test_double_pruned_backward_matches_reference(backend, device, lead, n, k, r, dtype):
    args = _problem(lead, n, k, r, dtype, device, double=True)
    _skip_unless_layer_backend(backend, args)
    _check_against_reference(args, dtype)
    assert perfkern.last_backend("sparse24_mm") == backend


WEIGHT_GRAD_SHAPES = [
    pytest.param(1, 16, 16, False, id="M1-N16-K16"),
    pytest.param(37, 33, 48, False, id="M37-N33-K48"),
    pytest.param(70, 130, 96, True, id="M70-N130-K96-strided"),
    pytest.param(300, 200, 272, False, id="M300-N200-K272"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,strided", WEIGHT_GRAD_SHAPES)
def test_weight_grad_matches_reference(backend, device, m, n, k, strided, dtype):
    """dWs = mask ⊙ (dyᵀ·x) in the compressed layout, on every backend that has it, every dtype (the CUDA core's
    kernel: fp16/bf16 tiles on the tensor cores, fp32 on FFMA), at shapes past every tile edge and, for the
    largest, through 128 x 128 tiles; strided inputs are row views of wider tensors."""
    if backend == "triton" and device.type == "cpu" and max(m, n, k) > 128:
        pytest.skip("too large for the Triton interpreter")
    pad = 8 if strided else 0
    dy = torch.randn(m, n + pad, device=device).to(dtype)[:, pad:]
    x = torch.randn(m, k + pad, device=device).to(dtype)[:, :k]
    _, meta = ref.compress_2to4(torch.randn(n, k, device=device))
    got = torch.ops.perfkern.sparse24_weight_grad(dy, x, meta)
    assert perfkern.last_backend("sparse24_weight_grad") == backend
    truth = ref.gather_2to4(dy.double().t() @ x.double(), meta)
    assert_within_torch_error(got, truth, ref.gather_2to4(dy.t() @ x, meta), "d_values")


def test_bf16_operands_beyond_the_fp16_range(backend, device):
    """bf16 reaches far beyond fp16's range: x of 2^17 (and the weight gradient's dyᵀ·x) and W, A of 2^-17 must
    reach the dots as bf16. A kernel feeding them to the tensor cores as fp16 overflows to inf; the interpreter
    rounds operands to the kernel's dot dtype as the GPU does, so that mistake fails here on the CPU too."""
    big = 2.0**17
    args = _problem((9,), 48, 64, 4, torch.bfloat16, device, double=True)
    _skip_unless_layer_backend(backend, args)
    args.update(x=args["x"] * big, values=args["values"] / big, lora_a=args["lora_a"] / big)
    args.update(bwd_values=args["bwd_values"] / big)
    _check_against_reference(args, torch.bfloat16)


def test_reference_backward_is_the_gradient_of_the_forward():
    """Without a backward copy the reference backward is the exact gradient: compare it with autograd of the
    reference forward in float64, and that with finite differences."""
    args = _problem((3,), 16, 32, 2, torch.float64, "cpu")
    names = ["x", "values", "bias", "lora_a", "lora_b"]
    leaves = [args[name].clone().requires_grad_(True) for name in names]

    def forward(x, values, bias, lora_a, lora_b):
        return ref.sparse24_linear(x, values, args["meta"], bias, lora_a, lora_b, args["scale"])

    assert torch.autograd.gradcheck(forward, leaves)
    y = forward(*leaves)
    grad = torch.randn_like(y)
    y.backward(grad)
    for name, leaf, expected in zip(names, leaves, _ref_grads(args, grad), strict=True):
        torch.testing.assert_close(leaf.grad, expected, msg=name)


def test_double_pruned_dx_uses_the_backward_copy():
    args = _problem((4,), 32, 64, 0, torch.float32, "cpu", double=True)
    grad = torch.randn(4, 32)
    dx = _ref_grads(args, grad)[0]
    w_bwd = ref.decompress_2to4(args["bwd_values"], args["bwd_meta"]).t()
    torch.testing.assert_close(dx, grad @ w_bwd)
    w = ref.decompress_2to4(args["values"], args["meta"])
    assert not torch.allclose(dx, grad @ w), "the double-pruned copy drops entries, so dx must differ"


def _op_args(name, device):
    args = _problem((8,), 32, 64, 4, torch.float16, device, double=True)
    x2, values, meta = args["x"], args["values"], args["meta"]
    lora_t = x2 @ args["lora_a"].t()
    grad = torch.randn(8, 32, device=device, dtype=torch.float16)
    return {
        "sparse24_mm": (x2, values, meta, args["bias"], lora_t, args["lora_b"], 0.5),
        "sparse24_weight_grad": (grad, x2, meta),
        "sparse24_linear": tuple(
            args[k].clone().requires_grad_(True) if k in ("x", "values", "lora_a") else args[k]
            for k in ("x", "values", "meta", "bias", "lora_a", "lora_b", "scale", "bwd_values", "bwd_meta")
        ),
    }[name]


@pytest.mark.parametrize("name", ["sparse24_mm", "sparse24_weight_grad", "sparse24_linear"])
def test_opcheck(device, name):
    torch.library.opcheck(getattr(torch.ops.perfkern, name).default, _op_args(name, device))


def test_compiles_without_graph_breaks(device):
    layer = perfkern.SparseLoRALinear(64, 32, rank=4, lazy=False, device=device)
    x = torch.randn(5, 64, device=device)
    compiled = torch.compile(
        lambda x: perfkern.sparse24_linear(x, layer.values, layer.meta, layer.bias, layer.lora_a, layer.lora_b, 2.0),
        fullgraph=True,
        backend="aot_eager",
    )
    expected = perfkern.sparse24_linear(x, layer.values, layer.meta, layer.bias, layer.lora_a, layer.lora_b, 2.0)
    torch.testing.assert_close(compiled(x), expected)


WIDTH_ERROR = r"x must be \[\.\.\., K\] with K = 2 \* values.shape\[1\] = 64, got \[4, 48\]"


def _bad_calls():
    args = _problem((4,), 32, 64, 4, torch.float32, "cpu", double=True)

    def call(**changes):
        return lambda: perfkern.sparse24_linear(**{**args, **changes})

    return [
        pytest.param(call(x=torch.randn(4, 60), values=args["values"][:, :30]), r"multiple of 16 .*got 60", id="K%16"),
        pytest.param(call(x=torch.randn(4, 48)), WIDTH_ERROR, id="K"),
        pytest.param(call(meta=args["meta"][:, :2]), r"meta must be \[N, K/16\] = \[32, 4\], got \[32, 2\]", id="meta"),
        pytest.param(call(meta=args["meta"].int()), r"meta must be int16", id="meta-dtype"),
        pytest.param(call(values=args["values"].half()), r"values must have x's dtype", id="dtype"),
        pytest.param(call(bias=torch.randn(31)), r"bias must be \[N\] = \[32\], got \[31\]", id="bias"),
        pytest.param(call(lora_a=torch.randn(4, 63)), r"lora_a must be \[r, K\] = \[4, 64\], got \[4, 63\]", id="A"),
        pytest.param(call(lora_b=torch.randn(32, 3)), r"lora_b must be \[N, r\] = \[32, 4\], got \[32, 3\]", id="B"),
        pytest.param(call(lora_b=None), r"lora_a and lora_b must be given together", id="A-only"),
        pytest.param(call(bwd_meta=None), r"bwd_values needs its bwd_meta", id="bwd"),
        pytest.param(
            call(bwd_values=args["bwd_values"][:, :8]),
            r"bwd_values must be \[K, N/2\] = \[64, 16\], got \[64, 8\]",
            id="bwd-shape",
        ),
        pytest.param(call(x=torch.randn(4, 64).int()), r"x must be float32, .*, bfloat16 or float64", id="x-dtype"),
        pytest.param(call(x=torch.randn(4, 64).double()), r"values must have x's dtype torch.float64", id="x-float64"),
    ]


@pytest.mark.parametrize("call,message", _bad_calls())
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# The module.


def _linear(k=64, n=32, dtype=torch.float32, device="cpu"):
    torch.manual_seed(1)
    return nn.Linear(k, n, device=device, dtype=dtype)


def test_drop_in_equality_at_init(device):
    linear = _linear(device=device)
    layer = perfkern.SparseLoRALinear.from_linear(linear, rank=8)
    x = torch.randn(2, 3, 64, device=device)
    pruned = linear.weight * sparsity.mask_2to4(linear.weight)
    torch.testing.assert_close(layer(x), F.linear(x, pruned, linear.bias))
    assert (layer.in_features, layer.out_features) == (64, 32)
    layer.enable_adapter()  # B starts at zero: switching the adapter on changes nothing
    torch.testing.assert_close(layer(x), F.linear(x, pruned, linear.bias))


def test_lazy_adapter_costs_nothing_until_enabled(device):
    layer = perfkern.SparseLoRALinear.from_linear(_linear(device=device), rank=4)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(6, 64, device=device)
    before = layer(x)
    before.sum().backward()
    assert layer.lora_a.grad is None and layer.lora_b.grad is None
    assert "lazy" in repr(layer)
    layer.enable_adapter()
    after = layer(x)
    after.sum().backward()
    assert layer.lora_a.grad is not None and layer.lora_b.grad is not None
    expected = before + layer.scale * (x @ layer.lora_a.t()) @ layer.lora_b.t()
    torch.testing.assert_close(after, expected)


def test_merge_and_to_linear(device):
    layer = perfkern.SparseLoRALinear.from_linear(_linear(device=device), rank=4, alpha=8, lazy=False)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(5, 64, device=device)
    dense = layer.to_linear()
    assert isinstance(dense, nn.Linear)
    torch.testing.assert_close(dense(x), layer(x), atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip(device):
    layer = perfkern.SparseLoRALinear.from_linear(_linear(device=device), rank=4, lazy=False)
    with torch.no_grad():
        layer.lora_b.normal_()
    state = layer.state_dict()
    assert set(state) == {"values", "meta", "bias", "lora_a", "lora_b", "adapter_enabled", "bwd_meta", "updates"}
    assert state["values"].shape == (32, 32) and state["meta"].dtype == torch.int16
    fresh = perfkern.SparseLoRALinear(64, 32, rank=4, device=device)
    fresh.load_state_dict(state)
    x = torch.randn(3, 64, device=device)
    torch.testing.assert_close(fresh(x), layer(x))
    assert torch.equal(fresh.values, layer.values) and torch.equal(fresh.meta, layer.meta)
    assert torch.equal(fresh.bwd_meta, layer.bwd_meta) and fresh.adapter_active


def test_metadata_is_stored_as_bytes(device):
    """The int16 metadata lives in uint8 buffers (collective backends have no int16): ``meta``/``bwd_meta`` are
    int16 views of them, writes through a view reach the buffer, and ``state_dict`` keeps the int16 format."""
    layer = perfkern.SparseLoRALinear.from_linear(_linear(device=device), rank=4, lazy=False)
    buffers = dict(layer.named_buffers())
    assert buffers["meta_bytes"].dtype == torch.uint8 and buffers["meta_bytes"].shape == (32, 8)
    assert buffers["bwd_meta_bytes"].dtype == torch.uint8 and buffers["bwd_meta_bytes"].shape == (64, 4)
    assert not any(b.dtype == torch.int16 for b in buffers.values())
    assert layer.meta.dtype == torch.int16 and layer.meta.shape == (32, 4)
    assert layer.bwd_meta.dtype == torch.int16 and layer.bwd_meta.shape == (64, 2)
    assert torch.equal(layer.meta_bytes.view(torch.int16), layer.meta)

    state = layer.state_dict()
    assert state["meta"].dtype == torch.int16 and state["bwd_meta"].shape == (64, 2)
    assert list(state)[:5] == ["values", "bias", "lora_a", "lora_b", "meta"], "the keys keep their order"
    saved = {k: v.clone() for k, v in state.items()}
    layer.bwd_meta.zero_()
    assert not layer.bwd_meta_bytes.any()
    layer.load_state_dict(saved, assign=True)
    assert layer.meta_bytes.dtype == torch.uint8 and torch.equal(layer.bwd_meta, saved["bwd_meta"])

    wrong = {**saved, "meta": saved["meta"].int()}
    with pytest.raises(RuntimeError, match=r"size mismatch for meta: expected int16 \[32, 4\]"):
        layer.load_state_dict(wrong)
    missing = {k: v for k, v in saved.items() if k != "bwd_meta"}
    assert layer.load_state_dict(missing, strict=False).missing_keys == ["bwd_meta"]
    with pytest.raises(TypeError, match=r"meta must be an int16 tensor of shape \[32, 4\]"):
        layer.meta = saved["meta"].int()
    layer.meta = saved["meta"].clone()
    assert layer.meta_bytes.dtype == torch.uint8 and torch.equal(layer.meta, saved["meta"])


@pytest.mark.parametrize("pattern,backward", [("row", "double"), ("row", "exact"), ("transposable", "exact")])
def test_training_step_lowers_the_loss_and_keeps_the_pattern(device, pattern, backward):
    torch.manual_seed(0)
    teacher = torch.randn(32, 64, device=device) / 8
    teacher = teacher * ref.mask_2to4(teacher)  # reachable by a 2:4 layer
    layer = perfkern.SparseLoRALinear(64, 32, rank=4, pattern=pattern, backward=backward, lazy=False, device=device)
    meta = layer.meta.clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(256, 64, device=device)
    target = x @ teacher.t()
    losses = []
    for _ in range(30):
        loss = F.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        assert layer.values.grad.shape == layer.values.shape  # compressed gradient: kept entries only
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(layer.meta, meta), "the forward mask is static"
    assert sparsity.is_2to4(sparsity.decompress_2to4(layer.values.detach(), layer.meta))


def test_transposable_backward_is_exact(device):
    layer = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None, pattern="transposable", backward="exact")
    layer = layer.to(device)
    x = torch.randn(7, 64, device=device, requires_grad=True)
    layer(x).backward(grad := torch.randn(7, 32, device=device))
    w = ref.decompress_2to4(layer.values.detach(), layer.meta)
    torch.testing.assert_close(x.grad, grad @ w)


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match="in_features must be a positive multiple of 16 .*got 60"):
        perfkern.SparseLoRALinear(60, 32)
    with pytest.raises(ValueError, match="backward='double' needs out_features % 16 == 0"):
        perfkern.SparseLoRALinear(64, 30)
    with pytest.raises(ValueError, match="pattern must be one of"):
        perfkern.SparseLoRALinear(64, 32, pattern="diagonal")
    with pytest.raises(ValueError, match=r"mask scores must be \[out, in\]"):
        perfkern.SparseLoRALinear.from_linear(_linear(), mask=torch.ones(3, 3))
    with pytest.raises(RuntimeError, match="no adapter"):
        perfkern.SparseLoRALinear(64, 32, adapter=None).enable_adapter()


def test_score_driven_mask():
    linear = _linear()
    scores = torch.rand(32, 64)
    layer = perfkern.SparseLoRALinear.from_linear(linear, mask=scores)
    kept = ref.decompress_2to4(layer.values.detach(), layer.meta) != 0
    assert torch.equal(kept, sparsity.mask_2to4(scores) & (linear.weight != 0))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64, bias=False)
        self.odd = nn.Linear(20, 64)
        self.narrow = nn.Linear(64, 24)
        self.lm_head = nn.Linear(64, 100)


def test_sparsify_converts_and_reports():
    model = _Block()
    x = torch.randn(2, 64)
    skipped = perfkern.sparsify(model, rank=4)
    assert isinstance(model.up, perfkern.SparseLoRALinear) and isinstance(model.down, perfkern.SparseLoRALinear)
    assert model.down.bias is None
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, perfkern.SparseLoRALinear)
    assert {s.name: s.reason for s in skipped} == {
        "odd": "in_features=20 is not a multiple of 16",
        "narrow": "out_features=24 is not a multiple of 16",
    }
    assert model.down(model.up(x)).shape == (2, 64)
    model = _Block()
    perfkern.sparsify(model, include=["up"], backward="exact")
    assert isinstance(model.up, perfkern.SparseLoRALinear) and isinstance(model.down, nn.Linear)


def test_output_can_be_modified_in_place_and_frozen_weights_work(device):
    layer = perfkern.SparseLoRALinear(64, 32, rank=4, lazy=False, device=device)
    x = torch.randn(2, 5, 64, device=device, requires_grad=True)
    h = layer(x)
    h += 1.0  # as nn.Linear's output allows
    h.sum().backward()
    assert x.grad is not None
    frozen = perfkern.SparseLoRALinear(64, 32, rank=4, lazy=False, train_sparse=False, device=device)
    frozen(x).sum().backward()
    assert frozen.values.grad is None and frozen.lora_a.grad is not None and int(frozen.updates) == 0


@pytest.mark.parametrize(
    "rank,alpha,expected_scale",
    [pytest.param(4, 8.0, 2.0, id="r4-alpha8"), pytest.param(3, None, 1.0, id="r3-default"),
     pytest.param(16, 4.0, 0.25, id="r16-alpha4")],
)  # fmt: skip
def test_lora_scale_is_alpha_over_rank(device, rank, alpha, expected_scale):
    """s = alpha / r (PEFT's LoRA scaling; alpha defaults to r), pinned by numbers written here, not read from
    the layer: the output and the merged weight must be Ws·x + b + s·B·A·x with that s."""
    layer = perfkern.SparseLoRALinear.from_linear(_linear(device=device), rank=rank, alpha=alpha, lazy=False)
    with torch.no_grad():
        layer.lora_b.normal_()
    assert layer.scale == expected_scale
    x = torch.randn(5, 64, device=device)
    w = ref.decompress_2to4(layer.values.detach(), layer.meta)
    a, b = layer.lora_a.detach(), layer.lora_b.detach()
    expected = x @ w.t() + layer.bias.detach() + expected_scale * (x @ a.t()) @ b.t()
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.merged_weight(), w + expected_scale * b @ a)


def test_float64_gradcheck_of_the_registered_backward():
    """The op's backward on the reference backend, in float64, against finite differences: every input with the
    exact backward; with SLoPe's double-pruned copy dx is an approximation by design, so there every other input."""
    args = _problem((2, 3), 16, 32, 3, torch.float64, "cpu", double=True)
    meta, bwd_values, bwd_meta = args["meta"], args["bwd_values"], args["bwd_meta"]
    leaves = [args[k].clone().requires_grad_(True) for k in ("x", "values", "bias", "lora_a", "lora_b")]
    with perfkern.use_backend("reference"):
        assert torch.autograd.gradcheck(
            lambda x, v, b, a, bb: perfkern.sparse24_linear(x, v, meta, b, a, bb, 0.7), leaves, fast_mode=True
        )
        leaves[0].requires_grad_(False)
        for copy in (bwd_values, None):
            assert torch.autograd.gradcheck(
                lambda x, v, b, a, bb, c=copy: perfkern.sparse24_linear(x, v, meta, b, a, bb, 0.7, c, bwd_meta),
                leaves,
                fast_mode=True,
            )
    assert perfkern.last_backend("sparse24_weight_grad") == "reference"


def test_float64_layer(device):
    layer = perfkern.SparseLoRALinear(64, 32, rank=4, alpha=8, lazy=False, backward="exact", dtype=torch.float64)
    layer.to(device)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 64, dtype=torch.float64, device=device, requires_grad=True)
    w = ref.decompress_2to4(layer.values.detach(), layer.meta)
    expected = x @ w.t() + layer.bias + 2.0 * (x @ layer.lora_a.t()) @ layer.lora_b.t()
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)).double()
    assert perfkern.sparsify(model, rank=2) == []
    assert model(torch.randn(5, 32, dtype=torch.float64)).dtype == torch.float64


def test_module_arguments_get_clear_errors():
    with pytest.raises(ValueError, match=r"in_features must be a positive multiple of 16 \(2:4 metadata\), got 0"):
        perfkern.SparseLoRALinear(0, 32)
    with pytest.raises(ValueError, match=r"out_features must be positive, got 0"):
        perfkern.SparseLoRALinear(32, 0, backward="exact")
    with pytest.raises(ValueError, match=r"rank must be >= 0 \(0: no adapter\), got -1"):
        perfkern.SparseLoRALinear(32, 32, rank=-1)
    layer = perfkern.SparseLoRALinear(64, 32)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., in_features\] = \[\.\.\., 64\], got \[4, 48\]"):
        layer(torch.randn(4, 48))
    args = _problem((4,), 32, 64, 0, torch.float32, "cpu")
    with pytest.raises(ValueError, match=WIDTH_ERROR):
        perfkern.sparse24_linear(args["x"][:, :48], args["values"], args["meta"])
