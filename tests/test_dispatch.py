"""Backend choice (DESIGN §1): one function decides, explicit requests never fall back, what ran is reported."""

from pathlib import Path

import pytest
import torch

import perfkern
from perfkern import _dispatch, _ext, sparsity


def test_env_variable_is_validated(monkeypatch):
    monkeypatch.setenv("PERFKERN_BACKEND", "fastest")
    expected = "PERFKERN_BACKEND must be one of auto, cuda, triton, cpu, reference, got 'fastest'"
    with pytest.raises(ValueError, match=expected):
        _dispatch.requested_backend()
    monkeypatch.setenv("PERFKERN_BACKEND", "Reference")
    assert _dispatch.requested_backend() == "reference"


def test_use_backend_nests_and_restores(monkeypatch):
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    assert _dispatch.requested_backend() == "auto"
    with perfkern.use_backend("reference"):
        with perfkern.use_backend("triton"):
            assert _dispatch.requested_backend() == "triton"
        assert _dispatch.requested_backend() == "reference"
    assert _dispatch.requested_backend() == "auto"
    with pytest.raises(ValueError, match="use_backend"):
        with perfkern.use_backend("gpu"):
            pass


def test_env_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("PERFKERN_BACKEND", "reference")
    sparsity.mask_2to4(torch.randn(4, 16))
    assert perfkern.last_backend("mask_2to4") == "reference"
    assert perfkern.last_backend() == "reference"


def test_explicit_cuda_on_cpu_tensor_raises(monkeypatch):
    monkeypatch.delenv("PERFKERN_EMULATE", raising=False)  # the emulated core runs on CPU tensors
    with perfkern.use_backend("cuda"), pytest.raises(perfkern.BackendUnavailableError, match="runs on CUDA tensors"):
        sparsity.mask_2to4(torch.randn(4, 16))


def test_cpu_backend_reason_off_the_cpu():
    reason = _dispatch.unavailable_reason("cpu", torch.device("cuda"))
    assert reason == "the cpu backend runs on CPU tensors, got a cuda tensor"


def test_cpu_auto_without_interpreter_runs_reference(monkeypatch):
    # compress has no cpu implementation: auto runs the reference; naming cpu raises.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("PERFKERN_EMULATE", raising=False)
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    sparsity.compress_2to4(torch.randn(4, 16), strict=False)
    assert perfkern.last_backend("compress_2to4") == "reference"
    expected = ["cpu", "reference"] if _ext.cpu_unavailable_reason() is None else ["reference"]
    assert perfkern.available_backends("cpu") == expected
    with perfkern.use_backend("triton"), pytest.raises(perfkern.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        sparsity.compress_2to4(torch.randn(4, 16), strict=False)
    with perfkern.use_backend("cpu"), pytest.raises(perfkern.BackendUnavailableError, match="has no cpu"):
        sparsity.compress_2to4(torch.randn(4, 16), strict=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path under the interpreter")
def test_cpu_auto_under_interpreter_runs_triton(monkeypatch):
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    monkeypatch.delenv("PERFKERN_EMULATE", raising=False)
    sparsity.compress_2to4(torch.randn(4, 16), strict=False)
    assert perfkern.last_backend("compress_2to4") == "triton"
    expected = ["triton", "cpu", "reference"] if _ext.cpu_unavailable_reason() is None else ["triton", "reference"]
    assert perfkern.available_backends("cpu") == expected


@pytest.mark.gpu
def test_gpu_auto_prefers_cuda(monkeypatch):
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    sparsity.compress_2to4(torch.randn(32, 64, device="cuda"), strict=False)
    assert perfkern.last_backend("compress_2to4") == "cuda"


def test_backend_names_follow_one_rule(monkeypatch):
    """use_backend and PERFKERN_BACKEND read a name the same way (case and surrounding spaces ignored) and
    reject the same names with the same message."""
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    for spelling in ("Triton", " REFERENCE ", "Auto"):
        with perfkern.use_backend(spelling):
            from_block = _dispatch.requested_backend()
        monkeypatch.setenv("PERFKERN_BACKEND", spelling)
        assert _dispatch.requested_backend() == from_block == spelling.strip().lower()
        monkeypatch.delenv("PERFKERN_BACKEND")
    listed = "one of auto, cuda, triton, cpu, reference, got 'gpu'"
    with pytest.raises(ValueError, match=f"use_backend\\(name\\) must be {listed}"):
        perfkern.use_backend("gpu").__enter__()
    monkeypatch.setenv("PERFKERN_BACKEND", "gpu")
    with pytest.raises(ValueError, match=f"PERFKERN_BACKEND must be {listed}"):
        _dispatch.requested_backend()


def test_autotune_variable_is_checked_wherever_an_op_runs(monkeypatch):
    monkeypatch.setenv("PERFKERN_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="PERFKERN_AUTOTUNE must be 0 or 1, got 'maybe'"):
        sparsity.mask_2to4(torch.randn(4, 16))


def test_last_backend_of_an_unknown_op_lists_the_names():
    sparsity.mask_2to4(torch.randn(4, 16))
    assert perfkern.last_backend("mask_2to4") is not None
    with pytest.raises(ValueError, match=r"op must be None or one of .*'compress_2to4'.*'sparse24_mm'.*got 'compres'"):
        perfkern.last_backend("compres")


def test_readme_names_every_op_that_last_backend_takes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name in _dispatch.op_names() if f"`{name}`" not in readme]
    assert not missing, f"README does not list {missing}"


def test_float64_runs_the_reference_under_auto_and_kernels_refuse_it(monkeypatch, device):
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    w = torch.randn(8, 32, dtype=torch.float64, device=device)
    sparsity.compress_2to4(w, strict=False)
    assert perfkern.last_backend("compress_2to4") == "reference"
    for backend in ("triton", "cuda"):
        if _dispatch.unavailable_reason(backend, device) is not None:
            continue
        with (
            perfkern.use_backend(backend),
            pytest.raises(
                perfkern.BackendUnavailableError,
                match=f"backend '{backend}' takes float32, float16 and bfloat16.*float64",
            ),
        ):
            sparsity.compress_2to4(w, strict=False)


def test_info_reports_a_bad_variable_without_a_traceback(monkeypatch, capsys):
    from perfkern.__main__ import main

    monkeypatch.setenv("PERFKERN_BACKEND", "fastest")
    monkeypatch.setenv("PERFKERN_AUTOTUNE", "maybe")
    assert main(["info"]) == 2
    out = capsys.readouterr().out
    assert "PERFKERN_BACKEND must be one of auto, cuda, triton, cpu, reference, got 'fastest'" in out
    assert "PERFKERN_AUTOTUNE must be 0 or 1, got 'maybe'" in out
    assert main([]) == 2, "the demo must not start with a bad configuration"


def test_inference_skips_the_dispatcher_and_matches_the_op():
    """Without autograd work the layer's product runs ``linear_forward`` directly (no custom-op dispatch); the result
    is the op's, bit for bit, and what ran is recorded as usual."""
    from perfkern.ops import sparse24 as ops

    layer = perfkern.SparseLoRALinear(64, 32, rank=4, lazy=False)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 5, 64)
    args = (x, layer.values, layer.meta, layer.bias, layer.lora_a, layer.lora_b)
    with torch.no_grad():
        assert ops.bypasses_dispatcher(*args)
        direct = layer(x)
    assert not ops.bypasses_dispatcher(*args), "a parameter that requires grad needs the autograd op"
    via_op = layer(x)
    assert via_op.grad_fn is not None
    torch.testing.assert_close(direct, via_op.detach(), rtol=0, atol=0)
    assert perfkern.last_backend("sparse24_mm") is not None


def test_planned_choice_follows_the_requested_backend():
    from perfkern.ops import sparse24 as ops

    layer = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None)
    x = torch.randn(2, 64)
    with torch.no_grad():
        for name in ("reference", "cpu", "reference"):
            if _dispatch.unavailable_reason(name, x.device) is not None:
                continue
            with perfkern.use_backend(name):
                layer(x)
                layer(x)
            assert perfkern.last_backend("sparse24_mm") == name
    # A choice that is not final (a stand-in for a measurement) is not remembered.
    calls = []

    def stand_in(impls, device, args):
        calls.append(1)
        return "reference", False

    original = _dispatch._select
    _dispatch._select = stand_in
    try:
        for _ in range(2):
            _dispatch.run_planned(ops.MM, x.device, ("not final",), *_mm_args(layer, x))
    finally:
        _dispatch._select = original
    assert len(calls) == 2


def _mm_args(layer, x):
    out = torch.empty(x.shape[0], layer.out_features)
    return x, layer.values.detach(), layer.meta, layer.bias.detach(), None, None, 1.0, out
