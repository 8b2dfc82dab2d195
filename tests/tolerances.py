"""The one tolerance table of the test suite.

Bit-exact ops (the 2:4 format: selection and data movement) are compared with ``assert_bits_equal``.
Arithmetic ops are compared with ``assert_close``: a kernel may be at most about twice as far from an fp64
truth as PyTorch itself is at the same precision, which these per-dtype bounds encode.
"""

import torch

TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype or expected.dtype])


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns of ``t`` (floats as integers of their width, bools as bytes)."""
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    if t.dtype.is_floating_point:
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, exact_nan: bool = False) -> None:
    """Equal bit for bit (so -0.0 != +0.0 and poison is caught), except that any NaN matches any NaN unless
    ``exact_nan``: ops that only move data must keep every NaN's sign and payload too."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.cpu(), expected.cpu()
    if a.dtype.is_floating_point and not exact_nan:
        both_nan = torch.isnan(a) & torch.isnan(e)
        a = torch.where(both_nan, torch.zeros_like(a), a)
        e = torch.where(both_nan, torch.zeros_like(e), e)
    diff = (bits(a) != bits(e)).nonzero()
    assert diff.numel() == 0, (
        f"{diff.shape[0]} elements differ; first at {tuple(diff[0].tolist())}: "
        f"{a[tuple(diff[0])].item()!r} vs {e[tuple(diff[0])].item()!r} "
        f"(bits {_hex(bits(a)[tuple(diff[0])])} vs {_hex(bits(e)[tuple(diff[0])])})"
    )


def _hex(bit_pattern: torch.Tensor) -> str:
    width = 2 * bit_pattern.element_size()
    return f"0x{int(bit_pattern) & ((1 << (4 * width)) - 1):0{width}x}"


def assert_within_torch_error(actual: torch.Tensor, truth: torch.Tensor, torch_native: torch.Tensor, name: str = ""):
    """The kernel's error against an fp32 ``truth`` is at most twice PyTorch's own error (``torch_native``: the
    same math in plain PyTorch at the kernel's precision), plus a floor from the tolerance table scaled to the
    output's magnitude."""
    assert actual.shape == truth.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    if truth.numel() == 0:
        return
    truth = truth.float()
    ours = (actual.float() - truth).abs().max().item()
    theirs = (torch_native.float() - truth).abs().max().item()
    floor = TOLERANCES[actual.dtype]["atol"] * max(1.0, truth.abs().max().item())
    assert ours <= 2 * theirs + floor, f"{name}: error {ours:.3g} > 2 x torch's {theirs:.3g} + {floor:.3g}"
