"""The package imports and reports itself with or without the compiled core; the core, when built, is sane; the
C ABI is the same in every flavour of the build."""

import re
import subprocess
import sys
from pathlib import Path

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
        pytest.skip("perfkern._C is not built (PERFKERN_BUILD_NATIVE=0, or no CMake / C++ compiler)")
    assert module.version() == perfkern.__version__
    assert module.build_flavor() in ("cuda", "cpu", "emulated")
    assert module.build_flavor() == ("emulated" if _ext.emulated() else module.build_flavor())
    assert module.cpu_isa() in ("scalar", "avx2", "avx512", "avx512_bf16")
    assert bool(module.cuda_archs()) == (module.build_flavor() != "cpu")
    count = module.device_count()
    if module.build_flavor() == "emulated":
        assert count == 1 and "emulated" in module.device_info(0)["name"]
    elif not torch.cuda.is_available():
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


def test_info_says_pure_python_without_the_core(monkeypatch, capsys):
    from perfkern import __main__ as cli

    monkeypatch.delenv("PERFKERN_EMULATE", raising=False)
    monkeypatch.setattr(_ext, "_load_module", lambda source: (None, "No module named 'perfkern._C'"))
    cli.info([])
    out = capsys.readouterr().out
    assert "perfkern._C: not built: a pure-Python install (the triton and reference backends run)" in out
    assert "backends available on cpu: reference" in out or "backends available on cpu: triton, reference" in out
    assert "cpu: perfkern._C is not built (a pure-Python install)" in out


ROOT = Path(__file__).resolve().parents[1]


def test_every_cuda_launcher_has_a_cpu_only_stub():
    # A build without CUDA keeps the ABI: every launcher of the header that takes a stream is defined in
    # csrc/common/no_cuda.cpp, returning PERFKERN_ERROR_NOT_SUPPORTED.
    header = (ROOT / "csrc/include/perfkern/perfkern.h").read_text()
    launchers = set(re.findall(r"PERFKERN_API perfkern_status_t (\w+)\([^;]*cudaStream_t stream\)", header))
    stubs = set(re.findall(r"^PERFKERN_NO_CUDA\((\w+),", (ROOT / "csrc/common/no_cuda.cpp").read_text(), re.M))
    assert "perfkern_sparse24_mm" in launchers
    assert launchers == stubs
