"""``python -m perfkern [info|format|demo] [demo options]``.

- ``info``: versions, the compiled core, the device and which backends can run;
- ``format``: a small 2:4 format demo (compress, decompress, a matmul, timings per backend);
- ``demo`` (the main job): a tiny GPT trained dense, 2:4 + lazy LoRA (SLoPe), + PERA and + dendrites, with a
  table and a loss-curve PNG (``python -m perfkern demo --help`` lists its options).

With no command: ``info``, then ``demo``.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import torch

import perfkern
from perfkern import _autotune, _dispatch, _ext, sparsity


def configuration_errors() -> list[str]:
    """What is wrong with the ``PERFKERN_*`` variables that every op reads (each op would raise it)."""
    errors = []
    for check in (_dispatch.requested_backend, _autotune.autotune_enabled):
        try:
            check()
        except ValueError as err:
            errors.append(str(err))
    return errors


def info(errors: list[str]) -> None:
    """Versions, the compiled core, the device, the backends, and ``errors`` (from ``configuration_errors``)."""
    print(f"perfkern {perfkern.__version__}  torch {torch.__version__}  python {platform.python_version()}")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"triton {triton_version}  TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    module = _ext.extension()
    if module is None:
        print(f"perfkern._C: {_ext.unavailable_reason()}")
    else:
        print(f"perfkern._C {module.version()} built for sm_{module.cuda_archs().replace(';', ', sm_')}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    else:
        print("device: cpu (no CUDA device visible to torch)")
    for error in errors:
        print(f"error: {error}")
    try:
        print(f"backend requested: {_dispatch.requested_backend()} (PERFKERN_BACKEND or perfkern.use_backend)")
    except ValueError:
        pass  # reported above
    print(f"backends available on {device.type}: {', '.join(perfkern.available_backends(device))}")
    for backend in _dispatch.BACKENDS:
        reason = _dispatch.unavailable_reason(backend, device)
        if reason is not None:
            print(f"  {backend}: {reason}")


def _time_ms(fn, device: torch.device, repeat: int = 5) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1e3


def format_demo() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n, k, m = (4096, 4096, 256) if device.type == "cuda" else (1024, 1024, 64)
    torch.manual_seed(0)
    w = torch.randn(n, k, device=device, dtype=dtype)
    x = torch.randn(m, k, device=device, dtype=dtype)

    pruned = w * sparsity.mask_2to4(w)
    values, meta = sparsity.compress_2to4(pruned)
    backend = perfkern.last_backend("compress_2to4")
    restored = sparsity.decompress_2to4(values, meta)
    dense_bytes = w.numel() * w.element_size()
    packed_bytes = values.numel() * values.element_size() + meta.numel() * meta.element_size()
    print(f"\n2:4 demo on {device.type}, W [{n}, {k}] {str(dtype).removeprefix('torch.')}, x [{m}, {k}]")
    kept = int((pruned != 0).sum()) / w.numel()
    print(f"  kept {kept:.1%} of W; compressed bytes {packed_bytes / dense_bytes:.4f} of dense")
    bwd_kept = int(sparsity.double_mask_2to4(w)[1].sum()) / w.numel()
    print(f"  SLoPe's double-pruned backward copy keeps {bwd_kept:.1%} of W")
    print(f"  decompress(compress(W)) == W: {torch.equal(restored, pruned)}  (compress ran on {backend})")
    y_sparse = x @ restored.t()
    y_dense = x @ pruned.t()
    print(f"  x @ Wsᵀ matches the dense product: {torch.equal(y_sparse, y_dense)}")
    print(f"  {'backend':<10} {'compress ms':>12} {'decompress ms':>14}")
    for name in perfkern.available_backends(device):
        if name == "triton" and device.type == "cpu":
            continue  # the interpreter is for testing, not timing
        with perfkern.use_backend(name):
            t_c = _time_ms(lambda: sparsity.compress_2to4(pruned, strict=False), device)
            t_d = _time_ms(lambda: sparsity.decompress_2to4(values, meta), device)
        print(f"  {name:<10} {t_c:>12.3f} {t_d:>14.3f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and not argv[0].startswith("-") else "all"
    rest = argv[1:] if command != "all" else argv
    if command not in ("all", "info", "format", "demo"):
        print(__doc__)
        print(f"unknown command {command!r}")
        return 2
    errors = configuration_errors()
    if command in ("all", "info"):
        info(errors)
    elif errors:
        print("\n".join(f"error: {error}" for error in errors))
    if errors:
        return 2
    if command == "format":
        format_demo()
    if command in ("all", "demo"):
        from perfkern import demo

        return demo.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
