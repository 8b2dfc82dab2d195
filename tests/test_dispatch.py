"""Backend choice (DESIGN §1): one function decides, explicit requests never fall back, what ran is reported."""

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
