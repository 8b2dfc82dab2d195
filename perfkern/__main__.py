"""``python -m perfkern [info|format|demo] [demo options]``; ``--help`` lists the commands.

- ``info``: versions, the compiled core, the device and which backends can run;
- ``format``: a small 2:4 format demo (compress, decompress, the sparse product checked against torch's dense
  product, timings per backend);
- ``demo`` (the main job): a tiny GPT trained dense, 2:4 + lazy LoRA (SLoPe), + PERA and + dendrites, with a
  table and a loss-curve PNG (``python -m perfkern demo --help`` lists its options).

With no command: ``info``, then ``demo``.
"""

from __future__ import annotations

import argparse
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
    print(_ext.describe())
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
    # The sparse product (perfkern's kernel on the selected backend) against torch's dense product of the pruned
    # weight: two code paths, compared at the dtype's tolerance.
    y_sparse = perfkern.sparse24_linear(x, values, meta)
    mm_backend = perfkern.last_backend("sparse24_mm")
    y_dense = x @ pruned.t()
    err = (y_sparse.float() - y_dense.float()).abs().max().item()
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype] * max(1.0, y_dense.abs().max().item())
    verdict = "within" if err <= tol else "OUTSIDE"
    print(f"  sparse24_linear ({mm_backend}) vs torch dense x @ Wsᵀ: max |diff| {err:.2e}, {verdict} {tol:.1e}")
    print(f"  {'backend':<10} {'compress ms':>12} {'decompress ms':>14}")
    for name in perfkern.available_backends(device):
        if name == "triton" and device.type == "cpu":
            continue  # the interpreter is for testing, not timing
        times = []
        for op, call in (
            ("compress_2to4", lambda: sparsity.compress_2to4(pruned, strict=False)),
            ("decompress_2to4", lambda: sparsity.decompress_2to4(values, meta)),
        ):
            if not _dispatch.implements(op, name):
                times.append("-")  # e.g. the cpu backend, which covers the sparse product only
                continue
            with perfkern.use_backend(name):
                times.append(f"{_time_ms(call, device):.3f}")
        print(f"  {name:<10} {times[0]:>12} {times[1]:>14}")


COMMANDS = {
    "info": "versions, the compiled core, the device and the backends that can run",
    "format": "the 2:4 format on a small matrix: compress, decompress, the sparse product against dense, timings",
    "demo": "the main job: a tiny GPT trained dense, 2:4 + lazy LoRA, + PERA, + dendrites (demo --help)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perfkern",
        description="perfkern: 2:4 sparse layers with fused low-rank adapters. With no command: info, then demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<8} {line}" for name, line in COMMANDS.items()),
    )
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="command", help="one of the below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and not argv[0].startswith("-") else None
    if command is None and any(a in ("-h", "--help") for a in argv):
        _parser().print_help()
        return 0
    if command is not None and command not in COMMANDS:
        _parser().print_usage(sys.stderr)
        print(f"python -m perfkern: unknown command {command!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    rest = argv[1:] if command is not None else argv
    if command in ("info", "format") and rest:
        if rest in (["-h"], ["--help"]):
            print(f"usage: python -m perfkern {command}\n\n{COMMANDS[command]}")
            return 0
        print(f"python -m perfkern {command} takes no options, got {' '.join(rest)}", file=sys.stderr)
        return 2
    errors = configuration_errors()
    if command in (None, "info"):
        info(errors)
    elif errors:
        print("\n".join(f"error: {error}" for error in errors))
    if errors:
        return 2
    if command == "format":
        format_demo()
    if command in (None, "demo"):
        from perfkern import demo

        return demo.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
