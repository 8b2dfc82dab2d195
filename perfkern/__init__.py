"""perfkern: 2:4 sparse linear layers with fused low-rank adapters, and the kernels behind them.

Backends (DESIGN §1): ``cuda`` (the compiled core, ``perfkern._C``), ``triton`` (``perfkern.kernels``) and
``reference`` (pure PyTorch, the truth and the CPU path). ``PERFKERN_BACKEND`` or ``use_backend`` chooses;
``available_backends`` and ``last_backend`` say what can run and what did; on a GPU, ``auto`` measures the backends
and a dense cuBLAS fallback per shape, and ``autotune_report`` says what it chose and why.
"""

from perfkern import calibration, dendrites, ops, sparsity
from perfkern._autotune import autotune_report
from perfkern._dispatch import available_backends, last_backend, use_backend
from perfkern._errors import BackendUnavailableError
from perfkern.convert import SkippedLayer, merge, sparsify
from perfkern.functional import dendrite_correlation, pera_adapter, pera_delta_weight, sparse24_linear
from perfkern.nn import PeraLinear, SparseLoRALinear

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "PeraLinear",
    "SkippedLayer",
    "SparseLoRALinear",
    "autotune_report",
    "available_backends",
    "calibration",
    "dendrite_correlation",
    "dendrites",
    "last_backend",
    "merge",
    "ops",
    "pera_adapter",
    "pera_delta_weight",
    "sparse24_linear",
    "sparsify",
    "sparsity",
    "use_backend",
    "__version__",
]
