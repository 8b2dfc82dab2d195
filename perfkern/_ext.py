"""The compiled core (``perfkern._C``), loaded on first use.

``import perfkern`` never needs it: only an op sent to a native backend does, and then a missing or unusable
extension gives an error that says what to do. The core is built with the host C++ compiler; its CPU kernels are in
every build, its CUDA kernels only when nvcc was found at install (``build_flavor() == "cuda"``).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

_BUILD_HINT = (
    "build it with nvcc on PATH: PERFKERN_BUILD_CUDA=1 pip install --no-build-isolation -e . "
    "(or use the triton/reference backends)"
)


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from perfkern import _C
    except ImportError as err:
        return None, f"the CUDA extension perfkern._C is not built ({err}); {_BUILD_HINT}"
    return _C, None


def extension() -> ModuleType | None:
    """``perfkern._C`` if it was built, else None."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """Why the cuda backend cannot run now (no extension, no driver, no device), or None."""
    module, reason = _load()
    if module is None:
        return reason
    if module.build_flavor() != "cuda":
        return f"perfkern._C was built without CUDA kernels (flavour {module.build_flavor()!r}); {_BUILD_HINT}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (a CPU build of torch, or no GPU/driver)"
    if module.device_count() == 0:
        return "perfkern._C sees no CUDA device (is the driver older than the CUDA runtime it was built with?)"
    return None


def cpu_unavailable_reason() -> str | None:
    """Why the cpu backend (the core's CPU kernels) cannot run, or None."""
    module, _ = _load()
    if module is None:
        return (
            "perfkern._C is not built (a pure-Python install); reinstall with CMake >= 3.24 and a C++ compiler: "
            "PERFKERN_BUILD_NATIVE=1 pip install --no-build-isolation -e ."
        )
    if not hasattr(module, "sparse24_mm_cpu"):
        return "perfkern._C predates the CPU kernels; reinstall perfkern"
    return None


def require_cpu() -> ModuleType:
    """``perfkern._C`` with its CPU kernels, or an actionable error."""
    reason = cpu_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"perfkern's cpu backend is unavailable: {reason}")
    return _load()[0]


# perfkern_cpu_isa_t: what the CPU launchers' ``isa`` field takes.
CPU_ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "avx512_bf16": 4}


def require() -> ModuleType:
    """``perfkern._C``, or an actionable error."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"perfkern's cuda backend is unavailable: {reason}")
    return _load()[0]


def stream_of(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as an int, for the core's launchers."""
    return torch.cuda.current_stream(device).cuda_stream


DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
