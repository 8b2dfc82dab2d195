"""The CUDA core's launchers of the training families, called directly for what the ops do not reach: the weight
gradient's accumulate-into and fp32 output, the double-pruned backward copy, PERA's accumulating forward, its
optional outputs, recomputed Z, split reductions and ranks up to 128, the dendrite correlation's token split and
score, the fused candidate gradient, and the running-state update against ``CorrelationState``. Outputs start as
NaN, so an unwritten entry fails.

They run on a GPU, or on the CPU in the emulator (``PERFKERN_EMULATE=1``); the largest shapes are left to GPUs."""

import pytest
import torch
from test_pera import _torch_native
from tolerances import TOLERANCES, assert_bits_equal, assert_within_torch_error

from perfkern import _dispatch, _ext
from perfkern.dendrites import CorrelationState, batch_moments
from perfkern.ops._common import core_workspace, launch_core
from perfkern.reference import dendrite as dref
from perfkern.reference import pera as pref
from perfkern.reference import sparse24 as sref

pytestmark = pytest.mark.cuda_emulated

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Multiply-adds above which a shape runs on GPUs only (the emulator executes ~10^8 per second).
EMULATED_MAX_MACS = 20_000_000
PERA_MODES = {"full": 0, "square": 1, "cross": 2}


@pytest.fixture
def dev():
    device = torch.device("cpu") if _ext.emulated() else torch.device("cuda")
    reason = _dispatch.unavailable_reason("cuda", device)
    if reason is not None:
        pytest.skip(f"cuda backend unavailable: {reason}")
    return device


def _skip_large(dev, macs):
    if dev.type == "cpu" and macs > EMULATED_MAX_MACS:
        pytest.skip("too large for the emulator (runs on GPUs)")


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _code(dtype):
    return _ext.DTYPE_CODES[dtype]


def _nan(shape, dtype, dev):
    return torch.full(shape, float("nan"), dtype=dtype, device=dev)


# ---- the sparse weight gradient -------------------------------------------------------------------------


def _weight_grad(dev, dy, x, meta, out, accumulate):
    launch_core(
        "sparse24_weight_grad", dev, dy=dy, x=x, meta=meta, out=out, m=x.shape[0], n=dy.shape[1], k=x.shape[1],
        dy_row_stride=dy.stride(0), x_row_stride=x.stride(0), meta_row_stride=meta.stride(0),
        out_row_stride=out.stride(0), accumulate=accumulate, dtype=_code(x.dtype), out_dtype=_code(out.dtype),
    )  # fmt: skip
    _sync(dev)


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("out_f32", [False, True], ids=["out-dtype", "out-f32"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "m,n,k",
    [
        pytest.param(45, 70, 96, id="M45-N70-K96"),
        pytest.param(130, 272, 272, id="M130-N272-K272"),
        pytest.param(4096, 2048, 4096, id="M4096-N2048-K4096"),
    ],
)
def test_weight_grad_accumulates(dev, m, n, k, dtype, out_f32, misaligned):
    """Gradient accumulation: out += mask ⊙ (dyᵀ·x), summed in fp32 and rounded once, into an output of the inputs'
    dtype or fp32 (a master gradient), with 16-byte stores or (an output one element off alignment) element-wise."""
    _skip_large(dev, m * n * k)
    dy, x = torch.randn(m, n, device=dev).to(dtype), torch.randn(m, k, device=dev).to(dtype)
    _, meta = sref.compress_2to4(torch.randn(n, k, device=dev))
    out_dtype = torch.float32 if out_f32 else dtype
    before = torch.randn(n, k // 2, device=dev).to(out_dtype)
    wide = _nan((n, k // 2 + 1), out_dtype, dev)
    out = wide[:, 1:] if misaligned else wide[:, : k // 2]
    out.copy_(before)
    _weight_grad(dev, dy, x, meta, out, accumulate=1)
    truth = before.double() + sref.gather_2to4(dy.double().t() @ x.double(), meta)
    native = (before.float() + sref.gather_2to4(dy.t() @ x, meta).float()).to(out_dtype)
    assert_within_torch_error(out, truth, native, "accumulated d_values")
    assert wide[:, 0 if misaligned else -1].isnan().all(), "wrote outside the output"
    fresh = _nan((n, k // 2), out_dtype, dev)
    _weight_grad(dev, dy, x, meta, fresh, accumulate=0)
    assert_within_torch_error(fresh, truth - before.double(), (native.float() - before.float()).to(out_dtype), "dW")


def test_weight_grad_refuses_another_output_dtype(dev):
    dy, x = torch.randn(33, 40, device=dev).half(), torch.randn(33, 64, device=dev).half()
    _, meta = sref.compress_2to4(torch.randn(40, 64, device=dev))
    with pytest.raises(RuntimeError, match=r"out_dtype: expected dtype \(1\) or 0 \(F32\), got 2"):
        _weight_grad(dev, dy, x, meta, torch.empty(40, 32, dtype=torch.bfloat16, device=dev), accumulate=0)


# ---- the double-pruned backward copy --------------------------------------------------------------------


def _transpose_prune(dev, values, meta, bwd_values, bwd_meta, choose_mask):
    n, k = values.shape[0], values.shape[1] * 2
    launch_core(
        "sparse24_transpose_prune", dev, values=values, meta=meta, bwd_values=bwd_values, bwd_meta=bwd_meta, n=n,
        k=k, values_row_stride=values.stride(0), meta_row_stride=meta.stride(0),
        bwd_values_row_stride=bwd_values.stride(0), bwd_meta_row_stride=bwd_meta.stride(0), choose_mask=choose_mask,
        dtype=_code(values.dtype),
    )  # fmt: skip
    _sync(dev)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", [(16, 16), (48, 80), (96, 272), (4096, 4096)], ids=lambda v: str(v))
def test_transpose_prune_is_compress_of_the_transpose(dev, n, k, dtype):
    """choose_mask = 1: bit for bit compress_2to4(Wsᵀ) (ties, NaN and -0.0 included); choose_mask = 0: bit for bit
    gather_2to4(Wsᵀ, bwd_meta). Outputs are row views of wider buffers whose padding must stay untouched."""
    _skip_large(dev, 64 * n * k)
    w = torch.randn(n, k, device=dev)
    w[0, :8] = 0.0
    w[1, 0] = -0.0
    w[2, 1] = float("nan")
    w[3:7, 4] = 1.0  # a tie along n
    values, meta = sref.compress_2to4(w.to(dtype))
    dense_t = sref.decompress_2to4(values, meta).t().contiguous()
    want_values, want_meta = sref.compress_2to4(dense_t)
    bwd_values = _nan((k, n // 2 + 8), dtype, dev)
    bwd_meta = torch.full((k, n // 16 + 2), -1, dtype=torch.int16, device=dev)
    _transpose_prune(dev, values, meta, bwd_values[:, : n // 2], bwd_meta[:, : n // 16], choose_mask=1)
    assert_bits_equal(bwd_meta[:, : n // 16], want_meta)
    assert_bits_equal(bwd_values[:, : n // 2], want_values)
    assert bwd_values[:, n // 2 :].isnan().all() and (bwd_meta[:, n // 16 :] == -1).all()
    _, other_meta = sref.compress_2to4(torch.randn(k, n, device=dev))
    gathered = _nan((k, n // 2), dtype, dev)
    _transpose_prune(dev, values, meta, gathered, other_meta, choose_mask=0)
    assert_bits_equal(gathered, sref.gather_2to4(dense_t, other_meta))


def test_transpose_prune_needs_n_multiple_of_16(dev):
    values, meta = sref.compress_2to4(torch.randn(24, 32, device=dev))
    with pytest.raises(RuntimeError, match="n: expected a multiple of 16, got 24"):
        _transpose_prune(dev, values, meta, torch.empty(32, 12, device=dev), torch.empty(32, 1, dtype=torch.int16,
                                                                                          device=dev), 1)  # fmt: skip


# ---- PERA -------------------------------------------------------------------------------------------------


def _pera_problem(dev, m, n, k, r, mode, dtype, h_scale=2.0):
    a = (torch.randn(r, k, device=dev) / k**0.5).to(dtype)
    b = (torch.randn(n, r, device=dev) / r**0.5).to(dtype)
    h = (torch.randn(pref.num_pairs(r, mode), device=dev) * h_scale).to(dtype)
    return torch.randn(m, k, device=dev).to(dtype), a, b, h


def _pera_fields(x, a, b, h, mode):
    return dict(
        x=x, lora_a=a, lora_b=b, h=h if h.numel() else None, m=x.shape[0], n=b.shape[0], k=x.shape[1], r=a.shape[0],
        x_row_stride=x.stride(0), a_row_stride=a.stride(0), b_row_stride=b.stride(0), mode=PERA_MODES[mode],
        dtype=_code(x.dtype),
    )  # fmt: skip


def _pera_forward(dev, x, a, b, h, scale, mode, out, accumulate):
    rh = a.shape[0] + h.shape[0]
    z = _nan((x.shape[0], rh), torch.float32, dev)
    launch_core(
        "pera_forward", dev, out=out, z=z, scale=scale, accumulate=accumulate, out_row_stride=out.stride(0),
        z_row_stride=z.stride(0), **_pera_fields(x, a, b, h, mode),
    )  # fmt: skip
    _sync(dev)
    return z


def _pera_backward(dev, grad, x, a, b, h, scale, mode, z, want=("dx", "d_a", "d_b", "d_h"), dx=None):
    """The backward's outputs (NaN where not computed); ``dx`` given: the adapter's dx is added to it."""
    outs = {"dx": _nan(x.shape, x.dtype, dev) if dx is None else dx, "d_a": _nan(a.shape, a.dtype, dev),
            "d_b": _nan(b.shape, b.dtype, dev), "d_h": _nan(h.shape, h.dtype, dev)}  # fmt: skip
    fields = dict(
        grad=grad, z=z, scale=scale, accumulate=int(dx is not None), grad_row_stride=grad.stride(0),
        z_row_stride=0 if z is None else z.stride(0),
        dx_row_stride=x.shape[1], d_a_row_stride=a.shape[1], d_b_row_stride=b.shape[1],
        **{name: outs[name] if name in want and outs[name].numel() else None for name in outs},
        **_pera_fields(x, a, b, h, mode),
    )  # fmt: skip
    workspace = core_workspace("pera_backward_workspace_size", dev, workspace=None, workspace_bytes=0, **fields)
    launch_core("pera_backward", dev, workspace=workspace, workspace_bytes=workspace.numel(), **fields)
    _sync(dev)
    return outs


@pytest.mark.parametrize("mode", list(PERA_MODES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pera_forward_adds_into_the_output(dev, dtype, mode):
    """accumulate = 1: y += s·(x·Âᵀ)·B̂ᵀ onto the caller's own base output."""
    x, a, b, h = _pera_problem(dev, 37, 50, 72, 6, mode, dtype)
    base = torch.randn(37, 50, device=dev).to(dtype)
    out = base.clone()
    _pera_forward(dev, x, a, b, h, 0.5, mode, out, accumulate=1)
    truth = base.double() + pref.pera_adapter(x.double(), a.double(), b.double(), h.double(), 0.5, mode)
    native_y, _ = _torch_native(x, a, b, h, 0.5, mode, torch.zeros(37, 50, device=dev, dtype=dtype))
    assert_within_torch_error(out, truth, (base.float() + native_y.float()).to(dtype), "y")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "m,n,k,r,mode",
    [
        pytest.param(5, 24, 40, 64, "full", id="M5-N24-K40-r64-full"),
        pytest.param(4, 16, 40, 128, "cross", id="M4-N16-K40-r128-cross"),
        pytest.param(700, 40, 48, 3, "full", id="M700-N40-K48-r3-splitM"),
        pytest.param(4096, 4096, 4096, 16, "full", id="M4096-N4096-K4096-r16"),
        pytest.param(2048, 1024, 1024, 64, "full", id="M2048-N1024-K1024-r64"),
    ],
)
def test_pera_ranks_and_splits(dev, m, n, k, r, mode, dtype):
    """Forward and every gradient at ranks up to 128 (r' = 2144 for r = 64 in full mode) and with the reductions
    over M split across CTAs, against the float64 reference, at most twice PyTorch's own error."""
    rh = r + pref.num_pairs(r, mode)
    _skip_large(dev, m * rh * (2 * k + 3 * n))
    x, a, b, h = _pera_problem(dev, m, n, k, r, mode, dtype, h_scale=2.0 / r)
    out = _nan((m, n), dtype, dev)
    z = _pera_forward(dev, x, a, b, h, 0.5, mode, out, accumulate=0)
    grad = torch.randn(m, n, device=dev).to(dtype)
    got = _pera_backward(dev, grad, x, a, b, h, 0.5, mode, z)
    truth64 = [t.double() for t in (x, a, b, h)]
    native_y, native_grads = _torch_native(x, a, b, h, 0.5, mode, grad)
    assert_within_torch_error(out, pref.pera_adapter(*truth64, 0.5, mode), native_y, "y")
    truths = pref.pera_adapter_backward(grad.double(), *truth64, 0.5, mode)
    for name, truth, native in zip(["dx", "d_a", "d_b", "d_h"], truths, native_grads, strict=True):
        assert_within_torch_error(got[name], truth, native, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pera_backward_outputs_are_optional_and_deterministic(dev, dtype):
    """Each gradient alone, and the backward with Z recomputed, equal the full backward bit for bit; two runs
    with split reductions (M = 600) are identical."""
    x, a, b, h = _pera_problem(dev, 600, 33, 40, 5, "full", dtype)
    z = _pera_forward(dev, x, a, b, h, 0.5, "full", _nan((600, 33), dtype, dev), accumulate=0)
    grad = torch.randn(600, 33, device=dev).to(dtype)
    full = _pera_backward(dev, grad, x, a, b, h, 0.5, "full", z)
    again = _pera_backward(dev, grad, x, a, b, h, 0.5, "full", None)
    for name in full:
        assert_bits_equal(again[name], full[name])
        alone = _pera_backward(dev, grad, x, a, b, h, 0.5, "full", z, want=(name,))
        assert_bits_equal(alone[name], full[name])
        others = [other for other in alone if other != name]
        assert all(alone[other].isnan().all() for other in others), f"{name} alone wrote another output"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pera_backward_adds_dx(dev, dtype):
    """accumulate = 1: dx += dZ·Â onto the base layer's dx, the sum formed in fp32 and rounded once."""
    x, a, b, h = _pera_problem(dev, 45, 33, 72, 5, "cross", dtype)
    z = _pera_forward(dev, x, a, b, h, 0.5, "cross", _nan((45, 33), dtype, dev), accumulate=0)
    grad = torch.randn(45, 33, device=dev).to(dtype)
    base = torch.randn(45, 72, device=dev).to(dtype)
    got = _pera_backward(dev, grad, x, a, b, h, 0.5, "cross", z, want=("dx",), dx=base.clone())["dx"]
    truth = base.double() + pref.pera_adapter_backward(grad.double(), *(t.double() for t in (x, a, b, h)), 0.5,
                                                       "cross")[0]  # fmt: skip
    _, native = _torch_native(x, a, b, h, 0.5, "cross", grad)
    assert_within_torch_error(got, truth, (base.float() + native[0].float()).to(dtype), "dx")


def test_pera_refuses_what_it_cannot_take(dev):
    x, a, b, h = _pera_problem(dev, 3, 16, 16, 129, "square", torch.float32)
    with pytest.raises(RuntimeError, match=r"not supported: r: expected 1 <= r <= 128, got 129"):
        _pera_forward(dev, x, a, b, h, 1.0, "square", _nan((3, 16), torch.float32, dev), accumulate=0)
    x, a, b, h = _pera_problem(dev, 300, 16, 16, 2, "full", torch.float32)
    fields = dict(
        grad=torch.randn(300, 16, device=dev), z=None, dx=None, d_a=a.clone(), d_b=None, d_h=None, accumulate=0,
        scale=1.0,
        grad_row_stride=16, z_row_stride=0, dx_row_stride=16, d_a_row_stride=16, d_b_row_stride=2,
        **_pera_fields(x, a, b, h, "full"),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"workspace: expected a 16-byte aligned buffer of at least \d+ bytes"):
        launch_core("pera_backward", dev, workspace=torch.empty(16, dtype=torch.uint8, device=dev),
                    workspace_bytes=16, **fields)  # fmt: skip


# ---- dendrite correlation ---------------------------------------------------------------------------------


def _moments(prefix, stats, count):
    v_mean, e_mean, cov, v_var, e_var = stats
    return {f"{prefix}_v_mean": v_mean, f"{prefix}_e_mean": e_mean, f"{prefix}_cov": cov, f"{prefix}_v_var": v_var,
            f"{prefix}_e_var": e_var, f"{prefix}_count": float(count)}  # fmt: skip


def _values_fields(values, errors):
    layers, p, c, n = values.shape
    return dict(
        values=values, errors=errors, layers=layers, p=p, c=c, n=n, values_stride_l=values.stride(0),
        values_stride_p=values.stride(1), values_stride_c=values.stride(2), errors_stride_l=errors.stride(0),
        errors_stride_p=errors.stride(1), dtype=_code(values.dtype),
    )  # fmt: skip


def _correlation(dev, values, errors, mode, split=True):
    layers, _, c, n = values.shape
    stats = [_nan(s, torch.float32, dev) for s in [(layers, c, n), (layers, n), (layers, c, n), (layers, c, n),
                                                   (layers, n)]]  # fmt: skip
    score = _nan((layers, c, n), torch.float32, dev)
    fields = dict(**_values_fields(values, errors), **_moments("stats", stats, 0), score=score, mode=mode)
    workspace, nbytes = None, 0
    if split:
        workspace = core_workspace("dendrite_correlation_workspace_size", dev, workspace=None, workspace_bytes=0,
                                   **fields)  # fmt: skip
        nbytes = workspace.numel()
    launch_core("dendrite_correlation", dev, workspace=workspace, workspace_bytes=nbytes, **fields)
    _sync(dev)
    return stats, score


@pytest.mark.parametrize("mode", [0, 1], ids=["cc", "pearson"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "layers,p,c,n",
    [
        pytest.param(1, 1103, 2, 5, id="L1-P1103-C2-N5-split"),
        pytest.param(2, 601, 9, 40, id="L2-P601-C9-N40-split"),
        pytest.param(24, 8192, 4, 1024, id="L24-P8192-C4-N1024"),
    ],
)
def test_correlation_splits_tokens_and_scores(dev, layers, p, c, n, dtype, mode):
    """When the layers, candidates and neurons alone give few CTAs the tokens are split (here into parts whose last
    one is shorter) and the parts merged in order; without a workspace nothing is split. Both against the float64
    two-pass truth, score included."""
    _skip_large(dev, layers * p * c * n * 40)
    values = (0.5 + 0.1 * torch.rand(layers, p, c, n, device=dev)).to(dtype)
    errors = torch.randn(layers, p, n, device=dev).to(dtype)
    v, e = values.double(), errors.double()
    dv, de = v - v.mean(1, keepdim=True), e - e.mean(1, keepdim=True)
    truth = [v.mean(1), e.mean(1), (dv * de.unsqueeze(2)).mean(1), (dv * dv).mean(1), (de * de).mean(1)]
    score_truth = dref.score(truth[2], truth[3], truth[4], "cc" if mode == 0 else "pearson")
    for split in (True, False):
        stats, score = _correlation(dev, values, errors, mode, split)
        for name, got, want in zip(["v_mean", "e_mean", "cov", "v_var", "e_var"], stats, truth, strict=True):
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(score.double(), score_truth, atol=1e-5, rtol=1e-4)


def _grad(dev, values, errors, stats, count, source, mode, upstream):
    out = _nan(values.shape, values.dtype, dev)
    launch_core(
        "dendrite_grad", dev, **_values_fields(values, errors), **_moments("batch", stats, count), alpha=None,
        beta=None, upstream=upstream, out=out, out_stride_l=out.stride(0), out_stride_p=out.stride(1),
        out_stride_c=out.stride(2), source=source, mode=mode,
    )  # fmt: skip
    _sync(dev)
    return out


@pytest.mark.parametrize("mode", ["cc", "pearson"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_candidate_gradient(dev, dtype, mode):
    """The coefficients formed in the kernel: from an upstream gradient of the score (= autograd of the reference),
    and Cascade-Correlation's (= CorrelationState.candidate_grad: the sign of the running score, a NaN error's
    neuron zeroed)."""
    values = torch.rand(2, 45, 3, 17, device=dev).to(dtype)
    errors = torch.randn(2, 45, 17, device=dev).to(dtype)
    errors[1, 7, 3] = float("nan")
    code = 0 if mode == "cc" else 1
    stats = dref.stats(values, errors)
    upstream = torch.randn(2, 3, 17, device=dev)
    got = _grad(dev, values, errors, stats, 45, 1, code, upstream)
    v64 = values.detach().double().requires_grad_(True)
    (dref.dendrite_correlation(v64, errors.double(), mode) * upstream.double()).sum().backward()
    clean = torch.ones(17, dtype=torch.bool, device=dev)
    clean[3] = False
    tol = TOLERANCES[dtype]
    scale = v64.grad[..., clean].abs().max().item()
    torch.testing.assert_close(got[..., clean].double(), v64.grad[..., clean], atol=tol["atol"] * 10 * scale,
                               rtol=tol["rtol"] * 10)  # fmt: skip
    state = CorrelationState(2, 3, 17, mode=mode, device=dev)
    state.update(torch.rand_like(values), torch.randn_like(errors))
    batch = batch_moments(values, errors)
    state.fold(batch)
    want = state.candidate_grad(values, errors, batch)
    fused = _grad(dev, values, errors, batch.stats, batch.count.item(), 2, code, state.score)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused.float(), want.float(), atol=tol["atol"] * scale, rtol=tol["rtol"])


def test_state_update_is_correlation_state_fold(dev):
    """Batches folded by the core equal CorrelationState.fold step by step: cumulative for the first `window`
    batches, then the EMA, the epoch statistics alongside (restarted by close_epoch after the third batch, so its
    count differs from the running one), an empty batch changing nothing, a NaN error keeping its neuron's old
    entries; the running score is the state's."""
    layers, c, n, window, beta = 2, 3, 37, 3, 0.9
    state = CorrelationState(layers, c, n, mode="pearson", window=window, beta=beta, device=dev)
    running = [t.clone() for t in state.running.stats]
    epoch = [t.clone() for t in state.epoch.stats]
    counts = [0.0, 0.0]
    score = _nan((layers, c, n), torch.float32, dev)
    for number, p in enumerate([20, 0, 31, 17, 40, 25], start=1):
        values, errors = torch.rand(layers, p, c, n, device=dev), torch.randn(layers, p, n, device=dev)
        if number == 3:
            errors[0, 4, 7] = float("nan")
        batch = batch_moments(values, errors)
        state.fold(batch)
        launch_core(
            "dendrite_state_update", dev, **_moments("batch", batch.stats, p),
            **_moments("running", running, counts[0]), **_moments("epoch", epoch, counts[1]), running_score=score,
            batch_number=number, window=window, beta=beta, layers=layers, c=c, n=n, mode=1,
        )  # fmt: skip
        _sync(dev)
        counts = [counts[0] + p, counts[1] + p]
        for name, got, want in zip(["v_mean", "e_mean", "cov", "v_var", "e_var"], running, state.running.stats,
                                   strict=True):  # fmt: skip
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=f"running {name} after batch {number}")
        for got, want in zip(epoch, state.epoch.stats, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=f"epoch after batch {number}")
        torch.testing.assert_close(score, state.score, atol=1e-6, rtol=1e-5)
        if number == 3:
            state.close_epoch()
            epoch = [t.clone() for t in state.epoch.stats]
            counts[1] = 0.0
    assert counts == [state.running.count.item(), state.epoch.count.item()]


# ---- the format launchers' empty problems ------------------------------------------------------------------


@pytest.mark.parametrize("rows, cols", [(0, 32), (5, 0)], ids=["rows0", "cols0"])
def test_format_launchers_take_null_pointers_for_an_empty_matrix(dev, rows, cols):
    """An empty matrix is a no-op with NULL pointers (what torch gives empty tensors); a non-empty one still needs
    them, and the error names the operand."""
    fields = dict(src=None, values=None, meta=None, mask=None, rows=rows, cols=cols, src_row_stride=cols,
                  values_row_stride=cols // 2, meta_row_stride=cols // 16, mask_row_stride=0, dtype=0)  # fmt: skip
    launch_core("sparse24_compress", dev, **fields)
    launch_core("sparse24_decompress", dev, values=None, meta=None, dense=None, rows=rows, cols=cols,
                values_row_stride=cols // 2, meta_row_stride=cols // 16, dense_row_stride=cols, dtype=0)  # fmt: skip
    launch_core("sparse24_meta_reorder", dev, src=None, dst=None, rows=0, meta_cols=4, to_cutlass=1)
    with pytest.raises(RuntimeError, match="src: expected a non-null device pointer, got NULL"):
        launch_core("sparse24_compress", dev, **{**fields, "rows": 2, "cols": 32, "src_row_stride": 32,
                                                 "values_row_stride": 16, "meta_row_stride": 2})  # fmt: skip
