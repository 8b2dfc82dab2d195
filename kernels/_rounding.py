"""Conversions that round, written once so that Triton's interpreter rounds exactly as the GPU does (STYLE habit 3).

On the GPU a dot takes its operands in the dtype a launcher chose (the tensor cores' 16-bit types, fp32 for exact
fp32), and a store to a 16-bit tensor rounds to nearest even. The interpreter differs in two ways: its 16-bit dot
arithmetic is wrong, and it converts fp32 to bfloat16 by truncation. So under ``INTERPRET`` an operand is rounded
to the dot dtype, as on the GPU, and then computed with in fp32, and a bfloat16 conversion rounds to nearest even
on the bits first. The CPU tests then run the GPU's operand choices and roundings, not a more precise stand-in.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter: the launchers pass it as the kernels' INTERPRET."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def round_to(t, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """``t`` converted to DTYPE, rounding to nearest even (ties to even, overflow to inf, NaN stays NaN)."""
    if INTERPRET and DTYPE == tl.bfloat16:
        f = t.to(tl.float32)
        bits = f.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        # The low half is now zero, so the interpreter's truncating conversion below is exact.
        f = tl.where(f != f, float("nan"), bits.to(tl.float32, bitcast=True))
        return f.to(DTYPE)
    return t.to(DTYPE)


@triton.jit
def dot_operand(t, DOT: tl.constexpr, INTERPRET: tl.constexpr):
    """``t`` as a dot takes it: in DOT on the GPU; under the interpreter rounded to DOT, then held in fp32."""
    t = round_to(t, DOT, INTERPRET)
    if INTERPRET:
        t = t.to(tl.float32)
    return t
