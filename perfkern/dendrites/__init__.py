"""Dendrites trained by error correlation (DESIGN §3.5): Perforated Backpropagation in the manner of
Cascade-Correlation (Fahlman & Lebiere 1990).

A wrapped layer computes ``out = base(x) + Σ_d w_d ⊙ σ(dendrite_d(x))``. Training alternates two phases:

- **neuron phase**: the base and the installed dendrites' output weights w_d train on the task loss;
- **dendrite phase**: the base is frozen; C candidate dendrites per neuron see the layer's input (detached, so no
  gradient reaches the layers below) and train to maximise |corr(candidate output, neuron error)|, the neuron
  error E = ∂L/∂out being captured in the backward of the task loss. Running statistics track each candidate's
  correlation over the whole phase; when they stop improving, each neuron installs its best candidate (with
  w = 0, so the function does not jump), the other candidates are dropped, and the neuron phase resumes.

- ``state``: ``CorrelationState``, the running sufficient statistics (count, means, co-moments) merged with Chan's
  formulas, and their reduction across ranks;
- ``layer``: ``DendriteLayer``, which wraps any linear-like module (``nn.Linear``, ``SparseLoRALinear``, PEFT LoRA
  layers), and ``add_dendrites``;
- ``trainer``: ``DendriteTrainer``, which switches phases on plateaus, with the options of the literature
  (frozen or trainable dendrites, cascade, rollback, optimizer kept or rebuilt, correlation or gradient-descent
  candidates), checkpoints and data parallelism.
"""

from perfkern.dendrites.layer import DendriteLayer, add_dendrites
from perfkern.dendrites.state import CorrelationState, Moments, batch_moments, merge_across_ranks
from perfkern.dendrites.trainer import DendriteTrainer

__all__ = [
    "CorrelationState",
    "DendriteLayer",
    "DendriteTrainer",
    "Moments",
    "add_dendrites",
    "batch_moments",
    "merge_across_ranks",
]
