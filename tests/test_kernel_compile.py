"""Every Triton kernel, compiled for sm_80 and sm_90 on a machine without a GPU: the instructions it is meant to
use and no register spills (DESIGN §5; STYLE habit 3).

The interpreter runs the kernels' arithmetic on the CPU but never compiles them, so it cannot see what the GPU
would run. Here the ops run once over a sweep of problems chosen to reach every block configuration their
launchers can pick (the launchers' tables: FORMAT_TILES, MM_TILES and MM_TILES_FP32, WEIGHT_GRAD_TILES, PERA's
BLOCK_P choices and caps, dendrite BLOCK_C), in every dtype, with the kernels' bodies skipped: each launch is
recorded instead. The distinct variants (kernel, constexprs, argument dtypes, warps) are then compiled by
``tests/_compile_kernels.py`` in a subprocess without TRITON_INTERPRET, through Triton's own argument binder for
each target, so each compiles as a launch on that GPU would (INTERPRET, which the launchers set from
TRITON_INTERPRET, as False). Flags that only add work (a bias, an adapter, Pearson's beta) are compiled in their
heaviest observed setting, which bounds the registers of the lighter ones.

Checked from the PTX and the cubin: a dot on 16-bit inputs runs on the tensor cores in that type (mma.sync on
sm_80, wgmma or mma.sync on sm_90) and never in the other 16-bit type or tf32; a dot that promises exact fp32
uses no tf32 MMA; kernels without a dot use no MMA; and no variant spills registers, except those listed in
KNOWN_SPILLS with their measured bytes and the reason. Variants that differ only in the op's 16-bit dtype but
launch the same signature (the format kernels move bits as int16) compile once. The subprocess keeps Triton's
cache in a temporary folder, so every run compiles afresh and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import perfkern
from perfkern import sparsity

HERE = Path(__file__).resolve().parent
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MODULES = ("sparse24", "pera", "dendrite")
# Constexpr flags that only switch optional work on: compiled in their heaviest observed setting.
OPTIONAL_WORK = ("HAS_BIAS", "HAS_LORA", "HAS_BETA")
# Kernels whose dots take 16-bit operands when the inputs are 16-bit (the rest have no dot, or only fp32 ones).
DOT_KERNELS = {
    "_sparse24_mm_kernel", "_sparse24_mm_reduce_kernel", "_sparse24_weight_grad_kernel", "_pera_z_fwd_kernel",
    "_pera_out_fwd_kernel", "_pera_dz_bwd_kernel", "_pera_db_bwd_kernel", "_pera_da_bwd_kernel",
    "_pera_dx_bwd_kernel", "_pera_delta_fwd_kernel",
}  # fmt: skip
# Variants that spill, as (kernel, arch, input dtype, constexprs as "NAME=value" joined by ", "): (spill store
# bytes, reason).
KNOWN_SPILLS: dict[tuple[str, int, str, str], tuple[int, str]] = {
    ("_dendrite_stats_fwd_kernel", 80, "float32", "BLOCK_C=2, BLOCK_N=256, BLOCK_P=8, SPLIT=False, num_warps=4"): (
        4,
        "one 4-byte slot where ptxas allocates 168 registers for this variant alone (sm_90, the split variant and"
        " the other tiles spill nothing); the kernel streams 16 KiB a chunk, so the slot costs nothing measurable,"
        " while a narrower tile would cost coalescing on every architecture",
    ),
}

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="records launches through the Triton interpreter"
)


def _encode(value):
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"tensor": {"dtype": str(value.dtype).removeprefix("torch."), "aligned": value.data_ptr() % 16 == 0}}
    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if value is None:
        return {"none": None}
    if isinstance(value, bool | int | float | str):
        return {type(value).__name__: value}
    raise TypeError(f"cannot record a launch argument of type {type(value).__name__}")


def _workload(dtype: torch.dtype) -> None:
    """The ops over problems that reach every tile of every launcher, forward and backward, in ``dtype``."""
    # Format kernels: 64 metadata words a row (wide tile) and 16 (tall tile).
    for k in (1024, 256):
        w = torch.randn(64, k).to(dtype)
        values, meta = sparsity.compress_2to4(w, strict=False)
        sparsity.mask_2to4(w)
        sparsity.gather_2to4(sparsity.decompress_2to4(values, meta), meta)
        if dtype != torch.float32:
            sparsity.from_cutlass(*sparsity.to_cutlass(values, meta))
    # The layer: each MM_TILES entry (M = 1, 64, 256), unsplit (K = 128) and split (K = 4096), with bias,
    # adapter and the double-pruned backward; the backward runs the weight gradient and dx on the copy.
    for m in (1, 64, 256):
        for k in (128, 4096):
            n, r = 256, 16
            values, meta = sparsity.compress_2to4(torch.randn(n, k).to(dtype), strict=False)
            bwd_meta = sparsity.compress_2to4(torch.randn(k, n).to(dtype), strict=False)[1]
            shapes = ((m, k), (n,), (r, k), (n, r))
            x, bias, a, b = (torch.randn(*shape).to(dtype).requires_grad_(True) for shape in shapes)
            values.requires_grad_(True)
            y = perfkern.sparse24_linear(x, values, meta, bias, a, b, 0.5, None, bwd_meta)
            y.backward(torch.ones_like(y))
    # PERA: r' = 14, 152, 560 reach BLOCK_P = 32, 64, 128; M = 64 and 512 reach one and several M splits.
    for r, m in ((4, 64), (16, 64), (32, 512)):
        a, b = torch.randn(r, 256).to(dtype), torch.randn(256, r).to(dtype)
        h = torch.randn(r * (r + 1) // 2).to(dtype)
        leaves = [t.requires_grad_(True) for t in (torch.randn(m, 256).to(dtype), a, b, h)]
        perfkern.pera_adapter(*leaves, 0.5, "full").sum().backward()
        perfkern.pera_delta_weight(*leaves[1:], 0.5, "full").sum().backward()
    # Dendrites: every BLOCK_C (C = 1, 2, 4, 8), P unsplit (8) and split (2048), both modes.
    for c in (1, 2, 4, 8):
        for p in (8, 2048):
            values = torch.rand(1, p, c, 256).to(dtype).requires_grad_(True)
            errors = torch.randn(1, p, 256).to(dtype)
            for mode in ("cc", "pearson"):
                perfkern.dendrite_correlation(values, errors, mode).sum().backward()


@contextlib.contextmanager
def _recording(launches: list, dtype: list):
    """Every kernel launch of perfkern.kernels is appended to ``launches`` instead of running, with the inputs'
    dtype (``dtype[0]``, set by the caller: the dtype the op was called with, whatever the kernel's arguments)."""
    import importlib

    from triton.runtime.interpreter import InterpretedFunction

    patched = []
    for name in MODULES:
        module = importlib.import_module(f"perfkern.kernels.{name}")
        for attr, kernel in vars(module).items():
            if isinstance(kernel, InterpretedFunction) and "run" not in vars(kernel):

                def run(*args, grid, warmup=False, _module=module.__name__, _kernel=attr, **kwargs):
                    launches.append((_module, _kernel, args, kwargs, dtype[0]))

                kernel.run = run
                patched.append(kernel)
    try:
        yield
    finally:
        for kernel in patched:
            del kernel.run


def _variant_key(module: str, kernel: str, args: tuple, kwargs: dict) -> tuple:
    """What a compilation depends on: the kernel, its tensors' dtypes and its constexprs (optional work aside)."""
    tensors = tuple((i, str(a.dtype)) for i, a in enumerate(args) if isinstance(a, torch.Tensor))
    kept = tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k not in OPTIONAL_WORK))
    return module, kernel, tensors, kept


@functools.cache
def _variants() -> list[dict]:
    """The distinct launches of the workload, each with the arguments of its heaviest observed launch."""
    launches: list = []
    current: list = [None]
    with _recording(launches, current), perfkern.use_backend("triton"):
        torch.manual_seed(0)
        for dtype in DTYPES:
            current[0] = dtype
            _workload(dtype)
    chosen: dict[tuple, tuple] = {}
    op_dtypes: dict[tuple, set] = {}
    for launch in launches:
        key = _variant_key(*launch[:4])
        op_dtypes.setdefault(key, set()).add(launch[4])
        weight = sum(bool(launch[3].get(flag)) for flag in OPTIONAL_WORK)
        if key not in chosen or weight > chosen[key][0]:
            chosen[key] = (weight, launch)
    specs = []
    for i, (key, (_, (module, kernel, args, kwargs, _dtype))) in enumerate(chosen.items()):
        if "INTERPRET" in kwargs:
            kwargs = {**kwargs, "INTERPRET": False}  # recorded in the interpreter; compiled as a GPU launch has it
        dtypes = "/".join(str(d).removeprefix("torch.") for d in DTYPES if d in op_dtypes[key])
        specs.append({"id": i, "module": module, "kernel": kernel, "dtype": dtypes,
                      "args": [_encode(a) for a in args],
                      "kwargs": {k: _encode(v) for k, v in kwargs.items()}})  # fmt: skip
    return specs


def _constexprs(spec: dict) -> str:
    return ", ".join(f"{k}={next(iter(v.values()))}" for k, v in sorted(spec["kwargs"].items()))


def _input_dtype(spec: dict) -> str:
    """The dtype(s) the op was called with when it launched this variant, joined by "/" (what the dots' operands
    must be), whatever the kernel's arguments."""
    return spec["dtype"]


@functools.cache
def _compiled() -> tuple[list[dict], dict[tuple[int, int], dict]]:
    specs = _variants()
    with tempfile.TemporaryDirectory(prefix="perfkern-triton-cache-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = cache
        done = subprocess.run([sys.executable, str(HERE / "_compile_kernels.py")], input=json.dumps(specs),
                              env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = {(r["id"], r["arch"]): r for r in json.loads(done.stdout)}
    return specs, results


def _kernels() -> set[str]:
    """Every Triton kernel the kernel modules define (the ``*_kernel`` functions; the rest are helpers)."""
    import importlib

    from triton.runtime.interpreter import InterpretedFunction

    return {
        attr
        for name in MODULES
        for attr, value in vars(importlib.import_module(f"perfkern.kernels.{name}")).items()
        if isinstance(value, InterpretedFunction) and attr.endswith("_kernel")
    }


def test_the_sweep_reaches_every_kernel_and_block_configuration():
    """Every kernel is launched, and each launcher's table of tiles is reached in every dtype it serves, so the
    compile test covers all the launchers can pick."""
    from perfkern.kernels import dendrite, pera, sparse24

    seen: dict[str, list] = {}
    for spec in _variants():
        kw = {k: next(iter(v.values())) for k, v in spec["kwargs"].items()}
        seen.setdefault(spec["kernel"], []).append((_input_dtype(spec).split("/"), kw))

    def reached(kernel: str, dtype: torch.dtype, **want) -> bool:
        name = str(dtype).removeprefix("torch.")
        return any(name in dtypes and all(kw.get(k) == v for k, v in want.items()) for dtypes, kw in seen[kernel])

    assert set(seen) == _kernels(), f"kernels never launched: {sorted(_kernels() - set(seen))}"
    missing = []
    for dtype in DTYPES:
        for block_r, block_w in sparse24.FORMAT_TILES:
            for kernel in ("_sparse24_compress_kernel", "_sparse24_decompress_kernel", "_sparse24_gather_kernel"):
                if not reached(kernel, dtype, BLOCK_R=block_r, BLOCK_W=block_w):
                    missing.append((kernel, dtype, block_r, block_w))
            for to_cutlass in (False, True):  # the CUTLASS layout is 16-bit only
                if dtype != torch.float32 and not reached(
                    "_sparse24_meta_reorder_kernel", dtype, BLOCK_R=block_r, BLOCK_C=block_w, TO_CUTLASS=to_cutlass
                ):
                    missing.append(("_sparse24_meta_reorder_kernel", dtype, block_r, block_w, to_cutlass))
        tiles = sparse24.MM_TILES_FP32 if dtype == torch.float32 else sparse24.MM_TILES
        for block_m, block_n, block_k, warps in tiles.values():
            tile = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps}
            for split in (False, True):
                if not reached("_sparse24_mm_kernel", dtype, **tile, BLOCK_K=block_k, SPLIT=split):
                    missing.append(("_sparse24_mm_kernel", dtype, tile, block_k, split))
            if not reached("_sparse24_mm_reduce_kernel", dtype, **tile):
                missing.append(("_sparse24_mm_reduce_kernel", dtype, tile))
        block_m, block_n, block_k, warps = sparse24.WEIGHT_GRAD_TILES["fp32" if dtype == torch.float32 else "16-bit"]
        tile = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps}
        if not reached("_sparse24_weight_grad_kernel", dtype, **tile):
            missing.append(("_sparse24_weight_grad_kernel", dtype, tile))
        pera_kernels = {"z": "_pera_z_fwd_kernel", "out": "_pera_out_fwd_kernel", "dz": "_pera_dz_bwd_kernel",
                        "db": "_pera_db_bwd_kernel", "da": "_pera_da_bwd_kernel", "dx": "_pera_dx_bwd_kernel",
                        "delta": "_pera_delta_fwd_kernel"}  # fmt: skip
        for kernel, name in pera_kernels.items():
            for block_p in {pera._blocks(kernel, dtype, r_hat)[2] for r_hat in range(1, 4096)}:
                if not reached(name, dtype, BLOCK_P=block_p):
                    missing.append((name, dtype, block_p))
        for block_c in {dendrite._blocks(1, 1, c, 1, dtype, torch.device("cpu")).block_c for c in range(1, 65)}:
            for split in (False, True):
                if not reached("_dendrite_stats_fwd_kernel", dtype, BLOCK_C=block_c, SPLIT=split):
                    missing.append(("_dendrite_stats_fwd_kernel", dtype, block_c, split))
            for kernel in ("_dendrite_merge_fwd_kernel", "_dendrite_grad_bwd_kernel"):
                if not reached(kernel, dtype, BLOCK_C=block_c):
                    missing.append((kernel, dtype, block_c))
    assert not missing, f"the sweep misses {sorted(set(map(str, missing)))}"


def test_every_variant_compiles_with_the_intended_instructions():
    specs, results = _compiled()
    problems = []
    for spec in specs:
        dtype = _input_dtype(spec)
        for arch in (80, 90):
            result = results[(spec["id"], arch)]
            where = f"{spec['kernel']} sm_{arch} [{dtype}] {_constexprs(spec)}"
            if "error" in result:
                problems.append(f"{where}: {result['error']}")
                continue
            mma = result["mma"]
            if spec["kernel"] in DOT_KERNELS and "/" in dtype:
                problems.append(f"{where}: one variant serves several input dtypes, so its dots cannot take theirs")
            if any(".tf32" in op for op in mma):
                problems.append(f"{where}: tf32 MMA {mma}")
            if spec["kernel"] not in DOT_KERNELS or dtype == "float32":
                if mma:
                    problems.append(f"{where}: MMA where none is meant {mma}")
                continue
            mine, other = (".bf16.bf16", ".f16.f16") if dtype == "bfloat16" else (".f16.f16", ".bf16.bf16")
            if not any(mine in op for op in mma) or any(other in op for op in mma):
                problems.append(f"{where}: expected {mine} tensor-core MMA only, got {mma}")
    assert not problems, "\n".join(problems)


def test_no_variant_spills_registers_except_the_listed_ones():
    specs, results = _compiled()
    spills, stale = [], dict(KNOWN_SPILLS)
    for spec in specs:
        for arch in (80, 90):
            result = results[(spec["id"], arch)]
            if "error" in result:
                continue  # reported by the instruction test
            key = (spec["kernel"], arch, _input_dtype(spec), _constexprs(spec))
            listed = stale.pop(key, None)
            if result["spill_stores"] or listed is not None:
                measured = result["spill_stores"]
                if listed is None or listed[0] != measured:
                    spills.append(f"{key}: {measured} bytes spill stores, {result['spill_loads']} loads, "
                                  f"{result['regs']} registers (listed: {listed})")  # fmt: skip
    assert not spills, "spills (fix the tile, or list the variant in KNOWN_SPILLS with a reason):\n" + "\n".join(spills)
    assert not stale, f"KNOWN_SPILLS lists variants no launcher compiles: {sorted(stale)}"
