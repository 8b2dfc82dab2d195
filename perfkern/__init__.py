"""perfkern: 2:4 sparse linear layers with fused low-rank adapters, and the kernels behind them.

Backends (DESIGN §1): ``cuda`` (the compiled core, ``perfkern._C``), ``triton`` (``perfkern.kernels``) and
``reference`` (pure PyTorch, the truth and the CPU path). ``PERFKERN_BACKEND`` or ``use_backend`` chooses;
``available_backends`` and ``last_backend`` say what can run and what did; on a GPU, ``auto`` measures the backends
and a dense cuBLAS fallback per shape, and ``autotune_report`` says what it chose and why.
"""

import functools as _functools
import sys as _sys

from perfkern import calibration, dendrites, ops, sparsity
from perfkern import convert as _convert
from perfkern._autotune import autotune_report
from perfkern._dispatch import available_backends, last_backend, use_backend
from perfkern._errors import BackendUnavailableError
from perfkern.convert import SkippedLayer
from perfkern.export import export_lora
from perfkern.functional import dendrite_correlation, pera_adapter, pera_delta_weight, sparse24_linear
from perfkern.nn import PeraLinear, SparseLoRALinear

__version__ = "0.1.0"


def _transformers_glue(model):
    """``perfkern.integrations.transformers`` when ``model`` is a transformers model (it is then imported already)."""
    transformers = _sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return None
    from perfkern.integrations import transformers as glue

    return glue


@_functools.wraps(_convert.sparsify)
def sparsify(model, *args, **kwargs):
    skipped = _convert.sparsify(model, *args, **kwargs)
    glue = _transformers_glue(model)
    if glue is not None:
        glue.attach(model)
    return skipped


sparsify.__doc__ += """

    A transformers model also gets the ``"perfkern"`` quantization config and quantizer, so that ``save_pretrained``
    writes a checkpoint that ``from_pretrained`` (this package imported) loads as the same model and that plain
    transformers refuses (``perfkern.integrations.transformers``)."""


@_functools.wraps(_convert.merge)
def merge(model, *args, **kwargs):
    merged = _convert.merge(model, *args, **kwargs)
    glue = _transformers_glue(merged)
    if glue is not None:
        glue.detach(merged)
    return merged


def from_pretrained(directory, model_class=None, **kwargs):
    """A transformers model from ``directory`` with its 2:4 layers as ``SparseLoRALinear``, ready for SLoPe
    fine-tuning or inference.

    ``directory`` holds a perfkern checkpoint (``save_pretrained`` of a sparsified model: every layer as it was
    saved) or a compressed-tensors ``sparse-24-bitmask`` one (as llm-compressor wrote them; read without
    compressed-tensors, bitmasks turned into canonical metadata exactly, shards and bf16/fp16/fp32 weights; each
    2:4 layer gets a fresh adapter built from ``rank``, ``alpha``, ``adapter``, ``pera_mode``, ``backward``,
    ``lazy``, ``train_sparse``, ``refresh_every`` as ``SparseLoRALinear`` takes them). ``model_class`` defaults to
    ``AutoModelForCausalLM``; other keywords (``dtype``, ``device_map``, ...) go to its ``from_pretrained``.
    Imports ``perfkern.integrations.transformers``, which registers the ``"perfkern"`` quantization method."""
    from perfkern.integrations import transformers as glue

    return glue.from_pretrained(directory, model_class=model_class, **kwargs)


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
    "export_lora",
    "from_pretrained",
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
