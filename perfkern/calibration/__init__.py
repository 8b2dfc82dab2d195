"""Calibration-based pruning (DESIGN §3.2): Wanda and PIP-style perturbation scores for 2:4 masks, PIP's
layer/block ranking and block removal, SparseGPT's 2:4 pruning with weight update, and a sparsity summary.

Every scorer runs the model on calibration ``batches``: an iterable of model inputs, each a tensor (``model(x)``),
a dict of keyword arguments (``model(**batch)``, as Hugging Face models take) or a tuple of positional arguments
(``model(*batch)``). The scored layers are the ``nn.Linear`` and Hugging Face ``Conv1D`` modules whose qualified
names match an ``include`` pattern (fnmatch; default all) and no ``exclude`` pattern, as in ``sparsify``. Scores
are fp32 [out, in] whatever the layer stores (``Conv1D`` keeps its weight [in, out]), ready for
``sparsify(model, scores=...)`` and ``mask_2to4``.

One module per method: ``wanda``, ``perturbation`` (PIP element scores), ``pip_blocks`` (PIP layer/block ranking),
``sparsegpt``, and ``summary``; ``_common`` holds the layer selection and the activation hooks they share. This
package sits above ``perfkern.nn`` (it scores and converts its layers); nothing below imports it.
"""

from perfkern.calibration.perturbation import gaussian_perturbation, perturbation_scores, token_dropout_perturbation
from perfkern.calibration.pip_blocks import SkipBlock, pip_layer_scores, pip_prune_blocks
from perfkern.calibration.sparsegpt import apply_sparsegpt_2to4, collect_hessians, sparsegpt_prune_2to4
from perfkern.calibration.summary import LayerSparsity, sparsity_summary, summarize
from perfkern.calibration.wanda import wanda_scores

__all__ = [
    "wanda_scores",
    "perturbation_scores",
    "gaussian_perturbation",
    "token_dropout_perturbation",
    "pip_layer_scores",
    "pip_prune_blocks",
    "SkipBlock",
    "collect_hessians",
    "sparsegpt_prune_2to4",
    "apply_sparsegpt_2to4",
    "LayerSparsity",
    "summarize",
    "sparsity_summary",
]
