"""Compile recorded Triton launches for real GPUs, without one: ``python tests/_compile_kernels.py < specs.json``.

Each spec is a launch as ``tests/test_kernel_compile.py`` recorded it (kernel, arguments, keywords). For every
spec and architecture this runs Triton's own argument binder for that target (so the signature, the constexprs
and the specialisation attributes are those a launch on that GPU would compile), compiles to PTX and a cubin
with ``triton.compile``, and reports the MMA instructions in the PTX and the registers, stack frame and spill
bytes ptxas gives the cubin. Results go to stdout as JSON. Run without TRITON_INTERPRET: the interpreter does
not compile.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

ARCHS = (80, 90)
# Tensor-core MMAs: mma.sync (sm_80 and later) and wgmma.mma_async (sm_90), with their shape and types.
_MMA = re.compile(r"\b((?:wgmma\.mma_async\.sync|mma\.sync)\.aligned\.[\w.]+)")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"REG:(\d+) STACK:(\d+)")


class _Pointer:
    """A tensor argument as the binder sees it: a dtype and an address (aligned to 16 bytes or not)."""

    def __init__(self, dtype, aligned: bool) -> None:
        self.dtype = dtype
        self._address = 0 if aligned else 8

    def data_ptr(self) -> int:
        return self._address


def _decode(value):
    import torch
    import triton.language as tl

    kind, payload = next(iter(value.items()))
    if kind == "tensor":
        return _Pointer(getattr(torch, payload["dtype"]), payload["aligned"])
    if kind == "tl_dtype":
        return tl.dtype(payload)
    if kind == "none":
        return None
    return payload


def _compile(job: tuple[dict, int]) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    spec, arch = job
    result = {"id": spec["id"], "arch": arch}
    try:
        kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        args = [_decode(a) for a in spec["args"]]
        kwargs = {key: _decode(v) for key, v in spec["kwargs"].items()}
        # As JITFunction.run completes the keywords before binding.
        kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)  # fmt: skip
        ptx = compiled.asm["ptx"]
        result["mma"] = sorted(set(_MMA.findall(ptx)))
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "kernel.cubin")
            with open(cubin, "wb") as f:
                f.write(compiled.asm["cubin"])
            usage = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", cubin], capture_output=True,
                                   text=True, check=True).stdout  # fmt: skip
            regs, stack = (int(v) for v in _REGS.search(usage).groups())
            result.update(regs=regs, stack=stack, spill_stores=0, spill_loads=0)
            if stack:
                # A stack frame: ptxas -v on the same PTX says how much of it is spills.
                ptx_path = os.path.join(tmp, "kernel.ptx")
                with open(ptx_path, "w") as f:
                    f.write(ptx)
                log = subprocess.run(
                    [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
                     ptx_path, "-o", os.path.join(tmp, "again.cubin")], capture_output=True, text=True, check=True,
                ).stderr  # fmt: skip
                _, stores, loads = (int(v) for v in _SPILLS.search(log).groups())
                result.update(spill_stores=stores, spill_loads=loads)
    except Exception as err:  # reported per launch: one broken variant must not hide the others
        result["error"] = f"{type(err).__name__}: {err}"
    return result


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("run without TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    specs = json.load(sys.stdin)
    jobs = [(spec, arch) for spec in specs for arch in ARCHS]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        results = list(pool.map(_compile, jobs, chunksize=4))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
