"""The compiled core, loaded on first use: ``perfkern._C``, or the emulated core ``perfkern._C_emu``.

``import perfkern`` never needs it: only an op sent to a native backend does, and then a missing or unusable
extension gives an error that says what to do. The core is built with the host C++ compiler; its CPU kernels are in
every build, its CUDA kernels only when nvcc was found at install (``build_flavor() == "cuda"``).

``PERFKERN_EMULATE=1`` loads ``perfkern._C_emu`` instead (built with ``PERFKERN_BUILD_EMULATED=1``): the same CUDA
kernels compiled for the CPU, executed instruction by instruction by the emulator. The ``cuda`` backend then runs
on CPU tensors (host pointers, stream 0) and ``auto`` never chooses it. ``PERFKERN_EMULATE=<path>`` loads that file,
another build of ``_C_emu`` (an AddressSanitizer build, a mutated one).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch

_BUILD_HINT = (
    "build it with nvcc on PATH: PERFKERN_BUILD_CUDA=1 pip install --no-build-isolation -e . "
    "(or use the triton/reference backends)"
)
_EMULATED_HINT = "build it with PERFKERN_BUILD_EMULATED=1 pip install --no-build-isolation -e ."


def emulation() -> str | None:
    """``PERFKERN_EMULATE``: None when unset or 0, else ``"1"`` or the path of a ``_C_emu`` build to load."""
    value = os.environ.get("PERFKERN_EMULATE", "").strip()
    return None if value in ("", "0") else value


def emulated() -> bool:
    """Whether the ``cuda`` backend runs the emulated core (``PERFKERN_EMULATE``)."""
    return emulation() is not None


# The process perfkern was imported in. The core registers a fork handler when it loads; loaded only after a
# fork, it is told here that this is a child (OpenMP threads started by the parent, e.g. for torch's own ops,
# cannot be used in a child: OpenMP there can hang).
_IMPORT_PID = os.getpid()


@functools.cache
def _load_module(source: str) -> tuple[ModuleType | None, str | None]:
    if source == "_C":
        try:
            module = importlib.import_module("perfkern._C")
        except ImportError as err:
            return None, f"the CUDA extension perfkern._C is not built ({err}); {_BUILD_HINT}"
        if os.getpid() != _IMPORT_PID and hasattr(module, "cpu_forked_child"):
            module.cpu_forked_child()
        return module, None
    if source == "1":
        try:
            return importlib.import_module("perfkern._C_emu"), None
        except ImportError as err:
            return None, f"PERFKERN_EMULATE=1 but perfkern._C_emu is not built ({err}); {_EMULATED_HINT}"
    if not os.path.isfile(source):
        return None, f"PERFKERN_EMULATE={source!r}: expected 1 or the path of a _C_emu build, and no such file exists"
    spec = importlib.util.spec_from_file_location("perfkern._C_emu", source)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as err:
        return None, f"PERFKERN_EMULATE={source!r}: cannot load it as perfkern._C_emu ({err})"
    return module, None


def _load() -> tuple[ModuleType | None, str | None]:
    return _load_module(emulation() or "_C")


def extension() -> ModuleType | None:
    """The loaded core (``perfkern._C``, or ``perfkern._C_emu`` under ``PERFKERN_EMULATE``) if it was built, else
    None."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """Why the cuda backend cannot run now (no extension, no driver, no device), or None."""
    module, reason = _load()
    if module is None:
        return reason
    if emulated():
        if module.build_flavor() != "emulated":
            return f"PERFKERN_EMULATE loads a {module.build_flavor()!r} build, not an emulated one; {_EMULATED_HINT}"
        if module.device_count() == 0:
            return "the emulated core has no device (is PERFKERN_EMULATE_SM 80 or 90?)"
        return None
    if module.build_flavor() != "cuda":
        return f"perfkern._C was built without CUDA kernels (flavour {module.build_flavor()!r}); {_BUILD_HINT}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (a CPU build of torch, or no GPU/driver)"
    if module.device_count() == 0:
        return "perfkern._C sees no CUDA device (is the driver older than the CUDA runtime it was built with?)"
    return None


def cpu_unavailable_reason() -> str | None:
    """Why the cpu backend (the CPU kernels of ``perfkern._C``, whatever ``PERFKERN_EMULATE`` says) cannot run, or
    None."""
    module, _ = _load_module("_C")
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
    return _load_module("_C")[0]


# perfkern_cpu_isa_t: what the CPU launchers' ``isa`` field takes.
CPU_ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "avx512_bf16": 4}


def require() -> ModuleType:
    """The loaded core, or an actionable error."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"perfkern's cuda backend is unavailable: {reason}")
    return _load()[0]


def describe() -> str:
    """One line: which core is loaded and what it runs on."""
    module, reason = _load()
    if module is None and not emulated():
        return "perfkern._C: not built: a pure-Python install (the triton and reference backends run)"
    if module is None:
        return f"core: {reason}"
    archs = module.cuda_archs()
    archs = "CUDA kernels for sm_" + archs.replace(";", ", sm_") if archs else "no CUDA kernels"
    cpu = (
        f"CPU kernels: {module.cpu_isa()}, threads: {module.cpu_threading()}"
        if hasattr(module, "cpu_isa")
        else "no CPU kernels"
    )
    name = "perfkern._C_emu" if emulated() else "perfkern._C"
    line = f"core: {name} {module.version()} ({module.build_flavor()} build): {archs}; {cpu}"
    if emulated() and module.device_count() > 0:
        info = module.device_info(0)
        line += f"; PERFKERN_EMULATE: the cuda backend runs on CPU tensors, on the {info['name']}"
    return line


def stream_of(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as an int, for the core's launchers (0 for the emulated core)."""
    if device.type == "cpu":
        return 0
    return torch.cuda.current_stream(device).cuda_stream


def device_index(device: torch.device) -> int:
    """The device ordinal the core's launchers take (the emulated core has one device, 0)."""
    return 0 if device.index is None else device.index


DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
