"""The package imports and reports itself with or without the compiled core; the core, when built, is sane."""

import subprocess
import sys

import pytest
import torch

import perfkern
from perfkern import _ext


def test_cuda_backend_error_says_what_to_do():
    reason = _ext.unavailable_reason()
    if reason is None:
        pytest.skip("the cuda backend is available here")
    with pytest.raises(RuntimeError, match="cuda backend is unavailable"):
        _ext.require()


def test_extension_reports_itself():
    module = _ext.extension()
    if module is None:
        pytest.skip("perfkern._C is not built (PERFKERN_BUILD_CUDA=0 or no nvcc)")
    assert module.version() == perfkern.__version__
    assert module.cuda_archs()
    count = module.device_count()
    if not torch.cuda.is_available():
        assert count == 0
    else:
        assert count == torch.cuda.device_count()
        info = module.device_info(0)
        assert info["name"] == torch.cuda.get_device_name(0)
        assert (info["major"], info["minor"]) == torch.cuda.get_device_capability(0)


def test_main_reports_versions_and_backends():
    out = subprocess.run(
        [sys.executable, "-m", "perfkern", "info"], check=True, capture_output=True, text=True, timeout=600
    ).stdout
    assert f"perfkern {perfkern.__version__}" in out
    assert "backends available" in out
