"""Test set-up (DESIGN §5): Triton runs in the interpreter when there is no GPU, outputs are NaN-poisoned,
GPU-only tests are marked ``gpu`` and skipped cleanly without one.

Under ``PERFKERN_EMULATE=1`` the ``cuda`` backend runs the emulated CUDA core on CPU tensors, so the tests of that
backend (marked ``cuda_emulated``) execute every CUDA kernel on the CPU: ``pytest -m cuda_emulated`` runs just
them. The tests then use the CPU even where a GPU exists."""

import os

import torch

EMULATED = os.environ.get("PERFKERN_EMULATE", "").strip() not in ("", "0")
HAS_GPU = torch.cuda.is_available() and not EMULATED

# Must precede the definition of any Triton kernel, so it is set before perfkern is imported.
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import perfkern  # noqa: E402
from perfkern import _ext  # noqa: E402
from perfkern.ops import _common  # noqa: E402


def pytest_report_header(config):
    if EMULATED:
        return f"perfkern: {_ext.describe()}"
    return None


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    previous = _common.set_poison(True)
    yield
    _common.set_poison(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if HAS_GPU else "cpu")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A ``backend`` case whose op has no implementation on that backend (the cpu backend covers the sparse product
    only) is skipped, not failed."""
    try:
        return (yield)
    except perfkern.BackendUnavailableError as err:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = params.get("backend")
        if backend is not None and f"has no {backend} implementation" in str(err):
            pytest.skip(str(err))
        raise


# Tests through the cuda backend execute the CUDA kernels: on a GPU, or in the emulator.
BACKEND_PARAMS = [
    pytest.param(name, marks=pytest.mark.cuda_emulated) if name == "cuda" else name
    for name in perfkern._dispatch.BACKENDS
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request, device):
    """Each backend in turn, inside ``use_backend``; skipped where it cannot run on this machine."""
    reason = perfkern._dispatch.unavailable_reason(request.param, device)
    if reason is not None:
        pytest.skip(f"{request.param} backend unavailable: {reason}")
    with perfkern.use_backend(request.param):
        yield request.param
