"""Backend choice (DESIGN §1): one function decides, explicit requests never fall back, what ran is reported."""

import pytest
import torch

import perfkern
from perfkern import _dispatch, sparsity


def test_env_variable_is_validated(monkeypatch):
    monkeypatch.setenv("PERFKERN_BACKEND", "fastest")
    expected = "PERFKERN_BACKEND must be one of auto, cuda, triton, reference, got 'fastest'"
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


def test_cpu_auto_without_interpreter_runs_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("PERFKERN_EMULATE", raising=False)
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    sparsity.compress_2to4(torch.randn(4, 16), strict=False)
    assert perfkern.last_backend("compress_2to4") == "reference"
    assert perfkern.available_backends("cpu") == ["reference"]
    with perfkern.use_backend("triton"), pytest.raises(perfkern.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        sparsity.compress_2to4(torch.randn(4, 16), strict=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path under the interpreter")
def test_cpu_auto_under_interpreter_runs_triton(monkeypatch):
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    monkeypatch.delenv("PERFKERN_EMULATE", raising=False)
    sparsity.compress_2to4(torch.randn(4, 16), strict=False)
    assert perfkern.last_backend("compress_2to4") == "triton"
    assert perfkern.available_backends("cpu") == ["triton", "reference"]


@pytest.mark.gpu
def test_gpu_auto_prefers_cuda(monkeypatch):
    monkeypatch.delenv("PERFKERN_BACKEND", raising=False)
    sparsity.compress_2to4(torch.randn(32, 64, device="cuda"), strict=False)
    assert perfkern.last_backend("compress_2to4") == "cuda"
