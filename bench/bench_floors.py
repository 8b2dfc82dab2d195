"""The two ceilings every kernel is reported against (issue: each kernel as a fraction of its floor): memory
bandwidth, from a large device-to-device copy (bytes read + written), and matrix throughput, from a large bf16
``torch.mm`` (fp32 on the CPU). Measured in the same run as the kernels."""

import torch
from shapes import shape_id

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_copy_bandwidth(record):
    n = 1 << 30 if DEVICE == "cuda" else 1 << 26  # bytes
    src = torch.empty(n, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    assert torch.equal(dst, src)
    record("floor: copy", shape_id((n,)), "torch", lambda: dst.copy_(src), None, None, bytes_moved=2 * n)


def test_matmul_throughput(record):
    size, dtype = (8192, torch.bfloat16) if DEVICE == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=DEVICE, dtype=dtype)
    b = torch.randn(size, size, device=DEVICE, dtype=dtype)
    torch.testing.assert_close((a @ b)[:4, :4].float(), (a[:4].float() @ b[:, :4].float()), atol=1.0, rtol=5e-2)
    record(f"floor: mm {str(dtype).removeprefix('torch.')}", shape_id((size, size, size)), "torch", lambda: a @ b,
           None, None, flops=2.0 * size**3)  # fmt: skip
