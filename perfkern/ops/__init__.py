"""``torch.library`` custom ops ``perfkern::*``: schema, fake kernel, autograd and the per-backend kernels.

Importing this package registers every op; ``torch.ops.perfkern.<name>`` is then callable directly."""

from perfkern.ops import dendrite, pera, sparse24  # noqa: F401
