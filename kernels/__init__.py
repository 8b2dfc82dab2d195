"""Triton kernels of perfkern, one module per op family (installed as ``perfkern.kernels``)."""
