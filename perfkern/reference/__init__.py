"""Pure-PyTorch reference implementations: the truth for every kernel, and the CPU path."""
