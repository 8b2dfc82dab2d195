"""Backend choice for every perfkern op, in one place (DESIGN §1).

``PERFKERN_BACKEND=auto|cuda|triton|cpu|reference`` sets the default; ``use_backend(name)`` overrides it for a
block of code. ``auto`` picks, per call, the first available backend in the op's preference order, except for ops
that opt in to per-shape tuning: ``perfkern._autotune`` measures their backends and a dense fallback (``torch.mm``
on the decompressed weight) per shape and runs the fastest. A backend named explicitly that cannot run the call
raises instead of falling back. ``last_backend()`` says what ran (``"dense"`` for the fallback).

On CPU tensors ``auto`` runs the core's CPU kernels where an op has them (measured per shape against dense and
the reference for ops that tune), else the reference; under ``TRITON_INTERPRET=1`` the Triton kernels run in the
interpreter instead (that is how the test suite exercises them without a GPU). Under ``PERFKERN_EMULATE`` the
``cuda`` backend runs the emulated CUDA core on CPU tensors when asked for by name; ``auto`` never picks it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from perfkern import _autotune, _ext
from perfkern._autotune import Tuning
from perfkern._errors import BackendUnavailableError

BACKENDS = ("cuda", "triton", "cpu", "reference")
# What auto tries on a CPU tensor outside the Triton interpreter, in this order.
_CPU_AUTO = ("cpu", "reference")
_CHOICES = ("auto", *BACKENDS)
_ENV = "PERFKERN_BACKEND"

_log = logging.getLogger("perfkern")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("perfkern_backend", default=None)
_last: dict[str, str] = {}
_ops: dict[str, OpImpls] = {}


def _check_name(name: str, source: str) -> str:
    """``name`` read by the one rule for backend names (case and surrounding spaces ignored; empty is auto)."""
    normal = (name.strip().lower() or "auto") if isinstance(name, str) else name
    if normal not in _CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(_CHOICES)}, got {name!r}")
    return normal


def requested_backend() -> str:
    """The backend asked for right now: the innermost ``use_backend`` block, else ``PERFKERN_BACKEND``, else auto."""
    name = _override.get()
    if name is not None:
        return name
    return _check_name(os.environ.get(_ENV, "auto"), _ENV)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the perfkern ops inside the block on backend ``name`` (``auto``, ``cuda``, ``triton``, ``cpu`` or
    ``reference``; read as ``PERFKERN_BACKEND`` is: case and surrounding spaces do not matter)."""
    token = _override.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _override.reset(token)


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"triton is not installed ({err}); pip install triton"
    return None


def _cuda_unavailable_reason(device: torch.device) -> str | None:
    if _ext.emulated():
        if device.type != "cpu":
            return f"under PERFKERN_EMULATE the cuda backend runs the emulated core on CPU tensors, got {device.type}"
        return _ext.unavailable_reason()
    if device.type != "cuda":
        return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor"
    return _ext.unavailable_reason()


def _triton_unavailable_reason(device: torch.device) -> str | None:
    reason = _triton_import_error()
    if reason is not None:
        return reason
    if device.type == "cpu" and not triton_interpret():
        return "Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (set it before importing perfkern)"
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels run on CUDA tensors, got a {device.type} tensor"
    return None


def _cpu_unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors, got a {device.type} tensor"
    return _ext.cpu_unavailable_reason()


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` now, or None if it can."""
    if backend == "reference":
        return None
    if backend == "triton":
        return _triton_unavailable_reason(device)
    if backend == "cuda":
        return _cuda_unavailable_reason(device)
    if backend == "cpu":
        return _cpu_unavailable_reason(device)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run on ``device`` (default: the current CUDA device if there is one, else the CPU)."""
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def op_names() -> list[str]:
    """The names ``last_backend`` takes: one per dispatched op, in the order they were defined."""
    return list(_ops)


def last_backend(op: str | None = None) -> str | None:
    """The backend that ran the most recent call of ``op`` (one of ``op_names()``, e.g. ``"compress_2to4"``), or
    of any op if None; None if it has not run yet."""
    if op is not None and op not in _ops:
        raise ValueError(f"op must be None or one of {', '.join(map(repr, _ops))}, got {op!r}")
    return _last.get(op if op is not None else "*")


def implements(op: str, backend: str) -> bool:
    """Whether ``backend`` has an implementation of ``op`` (one of ``op_names()``); whether it can run here is
    ``unavailable_reason``."""
    if op not in _ops:
        raise ValueError(f"op must be one of {', '.join(map(repr, _ops))}, got {op!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return _ops[op].has(backend)


def _has_float64(args: tuple) -> bool:
    return any(isinstance(arg, torch.Tensor) and arg.dtype == torch.float64 for arg in args)


def _dtype_reason(backend: str, args: tuple) -> str | None:
    """Why ``backend`` cannot take these arguments' dtypes, or None: the kernels run float32, float16 and
    bfloat16; float64 runs on the reference only (``auto`` picks it)."""
    if backend == "reference" or not _has_float64(args):
        return None
    return (
        f"backend {backend!r} takes float32, float16 and bfloat16 tensors, got torch.float64; float64 runs on the "
        "reference backend (auto picks it)"
    )


@dataclass(frozen=True)
class OpImpls:
    """One op's implementations, per backend; a string ``"module:function"`` is imported on first use so the
    Triton backend costs nothing until it runs."""

    name: str
    reference: Callable | str
    triton: Callable | str | None = None
    cuda: Callable | str | None = None
    # The core's CPU kernels; ``auto`` prefers them on CPU tensors (outside the Triton interpreter).
    cpu: Callable | str | None = None
    # The order ``auto`` tries on a GPU; an op keeps a backend out of it until that backend is proven there.
    # With ``tuning``, the backends ``auto`` measures, and the order it falls back on where it cannot measure.
    preference: tuple[str, ...] = BACKENDS
    # torch.mm on the dense weight: never asked for by name, ``auto`` runs it where tuning measured it fastest.
    dense: Callable | str | None = None
    tuning: Tuning | None = None
    _resolved: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _ops.setdefault(self.name, self)

    def has(self, backend: str) -> bool:
        """Whether ``backend`` implements the op (without importing it)."""
        return getattr(self, backend) is not None

    def get(self, backend: str) -> Callable | None:
        impl = getattr(self, backend)
        if isinstance(impl, str):
            if backend not in self._resolved:
                module, _, attr = impl.partition(":")
                self._resolved[backend] = getattr(importlib.import_module(module), attr)
            return self._resolved[backend]
        return impl


def select(impls: OpImpls, device: torch.device, args: tuple = ()) -> str:
    """The backend that runs ``impls`` with ``args`` on ``device`` now; raises if an explicitly requested one
    cannot."""
    return _select(impls, device, args)[0]


def _select(impls: OpImpls, device: torch.device, args: tuple) -> tuple[str, bool]:
    """``select``, and whether the same call would select the same backend until the settings change (a measured
    choice is; a stand-in for a measurement is not)."""
    requested = requested_backend()
    # Read on every call, wherever the op runs, so that a bad value is an error rather than silently ignored.
    _autotune.autotune_enabled()
    if requested != "auto":
        if not impls.has(requested):
            raise BackendUnavailableError(f"perfkern::{impls.name} has no {requested} implementation")
        reason = unavailable_reason(requested, device) or _dtype_reason(requested, args)
        if reason is not None:
            raise BackendUnavailableError(f"perfkern::{impls.name}: backend {requested!r} is unavailable: {reason}")
        return requested, True
    if _has_float64(args):
        return "reference", True
    if device.type == "cpu" and not triton_interpret():
        order = _CPU_AUTO
    else:
        order = tuple(b for b in impls.preference if b != "cpu")
    # The cuda backend on a CPU tensor is the emulated core: it proves kernels correct, never runs them for speed.
    available = [
        b for b in order
        if impls.has(b) and unavailable_reason(b, device) is None and (b != "cuda" or device.type == "cuda")
    ]  # fmt: skip
    if impls.tuning is not None and (device.type == "cuda" or order is _CPU_AUTO):
        names = [*available, "dense"] if impls.has("dense") else available
        return _autotune.choose_final(impls.name, impls.tuning, device, args, {b: impls.get(b) for b in names})
    return (available[0] if available else "reference"), True


def run(impls: OpImpls, device: torch.device, *args):
    """Call the selected implementation of ``impls`` with ``args`` and record which backend ran."""
    # Every implementation sets its own precision (fp32 accumulation); an enclosing autocast must not recast
    # the PyTorch ops inside it, the backward's included, nor those that tuning times.
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            return _run(impls, device, args)
    return _run(impls, device, args)


# Backends chosen by run_planned, per (op, the caller's plan key, the settings that steer the choice).
_plans: dict[tuple, str] = {}
_STEERING = ("TRITON_INTERPRET", "PERFKERN_AUTOTUNE", "PERFKERN_TUNE_CACHE", "PERFKERN_EMULATE")


def run_planned(impls: OpImpls, device: torch.device, plan: tuple, *args):
    """``run``, remembering the backend chosen for ``plan``: a key the caller derives cheaply from the call that
    determines everything the choice depends on (for a tuned op: what its ``Tuning.shape`` reports, the device).
    Repeated calls then skip the availability checks and the tuning key: at decode sizes that work costs more than
    the product. Only final choices are remembered; any change of backend request or steering variable, or an
    ``autotune`` reset, makes a new plan."""
    key = (impls.name, plan, requested_backend(), _autotune.generation(), *(os.environ.get(v) for v in _STEERING))
    backend = _plans.get(key)
    if backend is None:
        backend, final = _select(impls, device, args)
        if final:
            _plans[key] = backend
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            return _call(impls, backend, args)
    return _call(impls, backend, args)


def _run(impls: OpImpls, device: torch.device, args: tuple):
    return _call(impls, select(impls, device, args), args)


def _call(impls: OpImpls, backend: str, args: tuple):
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("perfkern::%s ran on %s (requested %s)", impls.name, backend, requested_backend())
    result = impls.get(backend)(*args)
    # Recorded after the call: an implementation may run other perfkern ops, and this op ran last.
    _last[impls.name] = backend
    _last["*"] = backend
    return result
