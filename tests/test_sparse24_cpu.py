"""The CPU kernels of the core (``perfkern_sparse24_mm_cpu`` and its dense twin) against the reference: every ISA
path the machine has (forced in turn), every dtype, odd N, K tails of each kernel's step, strided operands, bias or
not, low rank 0/1/64, both kernel shapes (rows below M = 6, cols from it), NaN-poisoned outputs; the thread pool;
the errors; and ``auto``'s per-shape choice on CPU tensors."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from tolerances import assert_bits_equal, assert_within_torch_error

import perfkern
from perfkern import _autotune, _dispatch, _ext
from perfkern.ops import sparse24 as ops
from perfkern.ops._common import launch_cpu
from perfkern.reference import sparse24 as ref

pytestmark = pytest.mark.skipif(_ext.cpu_unavailable_reason() is not None, reason="perfkern._C is not built")

ISAS = ["scalar", "avx2", "avx512", "avx512_bf16"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (M, N, K, r): M across both kernel shapes (rows < 6 <= cols, lane blocks of 8 and 16), odd N (row tiles of 4),
# K with a tail after the 32-column (AVX2, AVX-512) and 64-column (avx512_bf16) steps and after the cols kernel's
# blocks of K.
SHAPES = [
    pytest.param(1, 37, 48, 0, id="M1-N37-K48-r0"),
    pytest.param(1, 5, 144, 1, id="M1-N5-K144-r1"),
    pytest.param(2, 13, 64, 64, id="M2-N13-K64-r64"),
    pytest.param(3, 9, 80, 0, id="M3-N9-K80-r0"),
    pytest.param(5, 17, 16, 1, id="M5-N17-K16-r1"),
    pytest.param(6, 11, 112, 0, id="M6-N11-K112-r0"),
    pytest.param(9, 23, 96, 64, id="M9-N23-K96-r64"),
    pytest.param(17, 7, 208, 1, id="M17-N7-K208-r1"),
    pytest.param(40, 19, 64, 0, id="M40-N19-K64-r0"),
    # The cols kernel's blocks of K (x^T of 64 x 4 bytes per column: 256 columns per 64 KiB block, then a tail of
    # 32) and its passes of 32 weight rows (a thread's run of 1100 / 16 / threads rows).
    pytest.param(33, 33, 544, 1, id="M33-N33-K544-r1"),
    pytest.param(33, 1100, 64, 0, id="M33-N1100-K64-r0"),
]


def _isa(name):
    if not _ext.require_cpu().cpu_isa_supported(_ext.CPU_ISAS[name]):
        pytest.skip(f"this CPU (best: {_ext.require_cpu().cpu_isa()}) or build cannot run {name}")
    return name


def _operands(m, n, k, r, dtype, bias, strided):
    """x, values, meta, bias, lora_t, lora_b; with ``strided``, x and values are column slices of wider tensors
    (row strides > their width) and lora_t, lora_b are transposed views."""
    w = torch.randn(n, k)
    values, meta = ref.compress_2to4(w * ref.mask_2to4(w))
    values = values.to(dtype)
    x = torch.randn(m, k + (24 if strided else 0), dtype=dtype)[:, :k]
    if strided:
        values = torch.cat([values, torch.randn(n, 8, dtype=dtype)], 1)[:, : k // 2]
    b = torch.randn(n, dtype=dtype) if bias else None
    t = lora_b = None
    if r:
        t = torch.randn(r, m, dtype=dtype).t() if strided else torch.randn(m, r, dtype=dtype)
        lora_b = torch.randn(r, n, dtype=dtype).t() * 0.1 if strided else torch.randn(n, r, dtype=dtype) * 0.1
    return x, values, meta, b, t, lora_b


def _truth(x, values, meta, bias, t, lora_b, scale):
    """fp32 from an independent formula: the decompressed weight's dense product."""
    y = x.float() @ ref.decompress_2to4(values.float(), meta).t()
    if bias is not None:
        y = y + bias.float()
    if t is not None:
        y = y + scale * (t.float() @ lora_b.float().t())
    return y


def _torch_native(x, values, meta, bias, t, lora_b, scale):
    """The same in plain PyTorch at the operands' precision: the error budget of assert_within_torch_error."""
    y = x @ ref.decompress_2to4(values, meta).t()
    if bias is not None:
        y = y + bias
    if t is not None:
        y = y + scale * (t @ lora_b.t())
    return y


def _launch_dense(x, w, bias, t, lora_b, scale, out, isa, threads):
    has_lora = t is not None
    launch_cpu(
        "dense_mm_cpu", x=x, w=w, bias=bias, lora_t=t, lora_b=lora_b,
        out=out, m=x.shape[0], n=w.shape[0], k=x.shape[1], r=t.shape[1] if has_lora else 0, scale=scale,
        x_row_stride=x.stride(0), w_row_stride=w.stride(0), bias_stride=bias.stride(0) if bias is not None else 0,
        t_stride0=t.stride(0) if has_lora else 0, t_stride1=t.stride(1) if has_lora else 0,
        b_stride0=lora_b.stride(0) if has_lora else 0, b_stride1=lora_b.stride(1) if has_lora else 0,
        out_row_stride=out.stride(0), dtype=_ext.DTYPE_CODES[x.dtype], num_threads=threads,
        isa=_ext.CPU_ISAS[isa],
    )  # fmt: skip


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("m, n, k, r", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("isa", ISAS)
def test_sparse_kernel_matches_reference(isa, dtype, m, n, k, r, bias, strided):
    _isa(isa)
    x, values, meta, b, t, lora_b = _operands(m, n, k, r, dtype, bias, strided)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    ops._cpu_mm(x, values, meta, b, t, lora_b, 0.5, out, isa=isa)
    truth = _truth(x, values, meta, b, t, lora_b, 0.5)
    assert_within_torch_error(out, truth, _torch_native(x, values, meta, b, t, lora_b, 0.5), f"{isa} sparse")


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("m, n, k, r", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("isa", ISAS)
def test_dense_twin_matches_reference(isa, dtype, m, n, k, r, bias):
    _isa(isa)
    x, values, meta, b, t, lora_b = _operands(m, n, k, r, dtype, bias, strided=False)
    w = ref.decompress_2to4(values, meta)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    _launch_dense(x, w, b, t, lora_b, 0.5, out, isa, threads=2)
    truth = _truth(x, values, meta, b, t, lora_b, 0.5)
    assert_within_torch_error(out, truth, _torch_native(x, values, meta, b, t, lora_b, 0.5), f"{isa} dense")


@pytest.mark.parametrize("m", [1, 3, 8, 33], ids=lambda m: f"M{m}")
def test_threads_do_not_change_the_result(m, monkeypatch):
    """The split over threads is by output column, each column summed by one thread in one order: the result is
    the same bits for 1, 2 and 5 threads (more threads than cores included)."""
    x, values, meta, b, t, lora_b = _operands(m, 301, 1024, 16, torch.float32, True, False)
    outs = []
    for threads in (1, 2, 5):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        out = torch.full((m, 301), float("nan"))
        ops._cpu_mm(x, values, meta, b, t, lora_b, 0.5, out)
        outs.append(out)
    assert_bits_equal(outs[1], outs[0])
    assert_bits_equal(outs[2], outs[0])
    assert_within_torch_error(outs[0], _truth(x, values, meta, b, t, lora_b, 0.5),
                              _torch_native(x, values, meta, b, t, lora_b, 0.5))  # fmt: skip


def _mapped_openmp_runtimes() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if "libgomp" in line.split()[-1]}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_threads_run_on_torchs_openmp_runtime():
    """A Linux build with OpenMP runs the kernels' threads in the process's OpenMP runtime, the one torch's CPU
    build loaded: one libgomp in the process, so the kernels share torch's threads instead of contending with its
    spinning workers (which halved their speed right after a torch op)."""
    module = _ext.require_cpu()
    uses_openmp = "libgomp" in torch.__config__.parallel_info() or any(
        "libgomp" in p for p in _mapped_openmp_runtimes()
    )
    if not uses_openmp:
        pytest.skip("this torch does not run on libgomp")
    x, values, meta, b, t, lora_b = _operands(8, 301, 1024, 0, torch.float32, False, False)
    ops._cpu_mm(x, values, meta, b, t, lora_b, 1.0, torch.empty(8, 301))
    assert module.cpu_threading() == "openmp"
    runtimes = _mapped_openmp_runtimes()
    assert len(runtimes) == 1, f"more than one OpenMP runtime in the process: {sorted(runtimes)}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_the_kernels_on_its_own_threads():
    """After the parent ran a multi-threaded call, a forked child (a DataLoader worker) has none of the parent's
    threads: its calls run on a pool of its own, finish and give the parent's bits."""
    x, values, meta, b, t, lora_b = _operands(8, 301, 1024, 16, torch.float32, True, False)
    expected = torch.empty(8, 301)
    launch = dict(x=x, values=values, meta=meta, bias=b, lora_t=t, lora_b=lora_b, scale=0.5)
    ops._cpu_mm(**launch, out=expected)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read)
            out = torch.full((8, 301), float("nan"))
            with torch.no_grad():
                for _ in range(3):
                    launch_cpu(
                        "sparse24_mm_cpu", num_threads=2, out=out, m=8, n=301, k=1024, r=16, x=x, values=values,
                        meta=meta, bias=b, lora_t=t, lora_b=lora_b, scale=0.5, x_row_stride=x.stride(0),
                        values_row_stride=values.stride(0), meta_row_stride=meta.stride(0), bias_stride=1,
                        t_stride0=t.stride(0), t_stride1=t.stride(1), b_stride0=lora_b.stride(0),
                        b_stride1=lora_b.stride(1), out_row_stride=out.stride(0), dtype=0, isa=0,
                    )  # fmt: skip
            same = bool(torch.equal(out.view(torch.int32), expected.view(torch.int32)))
            os.write(write, f"{same} {_ext.require_cpu().cpu_threading()}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's call did not finish in 120 s")
    with os.fdopen(read) as pipe:
        report = pipe.read()
    assert os.waitstatus_to_exitcode(done[1]) == 0, report
    assert report == "True pool", report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_before_any_kernel_call_runs_on_its_own_threads():
    """The parent ran torch's OpenMP threads but never a perfkern kernel (a DataLoader's parent, say), then
    forked: the child's kernel calls must not use OpenMP threads inherited in name only. A fresh interpreter, so
    that no earlier test has called a kernel."""
    script = textwrap.dedent(
        """
        import os, signal, torch
        from perfkern import _ext
        from perfkern.ops._common import launch_cpu
        from perfkern.reference import sparse24 as ref
        torch.mm(torch.randn(512, 512), torch.randn(512, 512))  # torch's OpenMP threads start
        w = torch.randn(512, 256)  # 512K multiply-adds: a call worth two threads
        values, meta = ref.compress_2to4(w * ref.mask_2to4(w))
        x, out = torch.randn(8, 256), torch.full((8, 512), float("nan"))
        expected = x @ ref.decompress_2to4(values, meta).t()  # before the fork: torch's own mm can hang in a child
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a hung child ends itself
            launch_cpu("sparse24_mm_cpu", num_threads=2, x=x, values=values, meta=meta, bias=None, lora_t=None,
                       lora_b=None, out=out, m=8, n=512, k=256, r=0, scale=1.0, x_row_stride=256,
                       values_row_stride=128, meta_row_stride=16, bias_stride=0, t_stride0=0, t_stride1=0,
                       b_stride0=0, b_stride1=0, out_row_stride=512, dtype=0, isa=0)
            ok = (out - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()  # 4096 elements: serial
            print(ok, _ext.require_cpu().cpu_threading(), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("parent", _ext.require_cpu().cpu_threading(), os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[0] == "True pool", done.stdout
    parent = done.stdout.strip().splitlines()[-1]
    assert parent.split()[2] == "0" and parent.split()[1] in ("openmp", "pool"), done.stdout


def test_broadcast_operands():
    """Stride-0 inputs (an expanded x row, an expanded bias) are read as they are, not rejected or copied."""
    x, values, meta, *_ = _operands(1, 9, 64, 0, torch.float32, False, False)
    xb, bias = x.expand(5, 64), torch.randn(1).expand(9)
    assert xb.stride(0) == 0 and bias.stride(0) == 0
    out = torch.full((5, 9), float("nan"))
    ops._cpu_mm(xb, values, meta, bias, None, None, 1.0, out)
    truth = _truth(xb, values, meta, bias, None, None, 1.0)
    assert_within_torch_error(out, truth, _torch_native(xb, values, meta, bias, None, None, 1.0))


def test_empty_products_write_only_the_epilogue():
    x, values, meta, b, t, lora_b = _operands(3, 5, 16, 2, torch.float32, True, False)
    out = torch.full((3, 5), float("nan"))
    ops._cpu_mm(x[:, :0], values[:, :0], meta[:, :0], b, t, lora_b, 0.5, out)
    torch.testing.assert_close(out, b + 0.5 * t @ lora_b.t())
    ops._cpu_mm(x[:0], values, meta, b, t[:0], lora_b, 0.5, out[:0])  # M = 0: nothing to do, no error


def test_errors_name_the_field():
    x, values, meta, *_ = _operands(2, 4, 32, 0, torch.float32, False, False)
    out = torch.empty(2, 4)
    module = _ext.require_cpu()
    fields = dict(
        x=x.data_ptr(), values=values.data_ptr(), meta=meta.data_ptr(), bias=0, lora_t=0, lora_b=0,
        out=out.data_ptr(), m=2, n=4, k=32, r=0, scale=1.0, x_row_stride=32, values_row_stride=16,
        meta_row_stride=2, bias_stride=0, t_stride0=0, t_stride1=0, b_stride0=0, b_stride1=0, out_row_stride=4,
        dtype=0, num_threads=1, isa=0,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="k: expected a multiple of 16, got 40"):
        module.sparse24_mm_cpu(**{**fields, "k": 40})
    with pytest.raises(RuntimeError, match=r"out_row_stride: expected >= 4 \(n\), got 3"):
        module.sparse24_mm_cpu(**{**fields, "out_row_stride": 3})
    with pytest.raises(RuntimeError, match="x_row_stride: expected >= 0, got -32"):
        module.sparse24_mm_cpu(**{**fields, "x_row_stride": -32})
    with pytest.raises(RuntimeError, match="num_threads: expected 1..4096, got 0"):
        module.sparse24_mm_cpu(**{**fields, "num_threads": 0})
    with pytest.raises(RuntimeError, match="lora_t: expected a non-null pointer, got NULL"):
        module.sparse24_mm_cpu(**{**fields, "r": 4})
    missing = next((name for name in ISAS if not module.cpu_isa_supported(_ext.CPU_ISAS[name])), None)
    if missing is not None:
        with pytest.raises(RuntimeError, match=f"not supported: isa: this CPU or build cannot run {missing}"):
            module.sparse24_mm_cpu(**{**fields, "isa": _ext.CPU_ISAS[missing]})


def test_mixed_dtypes_are_declined():
    x, values, meta, *_ = _operands(2, 4, 32, 0, torch.float32, False, False)
    with pytest.raises(perfkern.BackendUnavailableError, match="one float32/float16/bfloat16 dtype"):
        ops._cpu_mm(x, values.bfloat16(), meta, None, None, None, 1.0, torch.empty(2, 4))


# auto on CPU tensors (outside the Triton interpreter): measured per shape among cpu, reference and dense.


@pytest.fixture
def cpu_auto(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for name in ("PERFKERN_BACKEND", "PERFKERN_AUTOTUNE", "PERFKERN_TUNE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_autotune, "TABLE_DIR", tmp_path / "tables")
    _autotune.reset()
    yield
    _autotune.reset()


def _fake_times(monkeypatch, **times_ms):
    names = {ops.MM.get(b): b for b in ("cpu", "reference", "dense")}
    measured = []

    def timer(fn, args, device):
        assert device.type == "cpu"
        fn(*args)
        measured.append(names[fn])
        return times_ms[names[fn]]

    monkeypatch.setattr(_autotune, "measure", timer)
    return measured


@pytest.mark.parametrize("winner", ["cpu", "dense", "reference"])
def test_cpu_auto_runs_the_fastest_measured(cpu_auto, monkeypatch, winner):
    measured = _fake_times(monkeypatch, **{b: (1.0 if b == winner else 5.0) for b in ("cpu", "reference", "dense")})
    x, values, meta, b, *_ = _operands(3, 24, 64, 0, torch.float32, True, False)
    y = perfkern.sparse24_linear(x, values, meta, b)
    assert measured == ["cpu", "reference", "dense"]
    assert perfkern.last_backend("sparse24_mm") == winner
    assert_within_torch_error(y, _truth(x, values, meta, b, None, None, 1.0),
                              _torch_native(x, values, meta, b, None, None, 1.0))  # fmt: skip
    perfkern.sparse24_linear(x, values, meta, b)  # now a steady weight: a key of its own, measured once
    perfkern.sparse24_linear(x, values, meta, b)
    assert len(measured) == 6, "a shape is measured once"
    key = next(iter(perfkern.autotune_report()))
    assert key.device.startswith("cpu_") and key.device.endswith(f"_{torch.get_num_threads()}t")


def test_cpu_auto_without_measuring_runs_the_kernel(cpu_auto, monkeypatch):
    monkeypatch.setenv("PERFKERN_AUTOTUNE", "0")
    x, values, meta, *_ = _operands(2, 8, 32, 0, torch.float32, False, False)
    perfkern.sparse24_linear(x, values, meta)
    assert perfkern.last_backend("sparse24_mm") == "cpu"


def test_cpu_auto_real_timing_picks_a_candidate(cpu_auto):
    """The wall-clock timer itself: every candidate gets a positive time and the winner is the fastest."""
    x, values, meta, *_ = _operands(1, 64, 256, 0, torch.float32, False, False)
    perfkern.sparse24_linear(x, values, meta)
    (decision,) = perfkern.autotune_report().values()
    assert set(decision.times_ms) == {"cpu", "reference", "dense"}
    assert all(t > 0 for t in decision.times_ms.values())
    assert decision.winner == min(decision.times_ms, key=decision.times_ms.get)


def test_measure_cpu_stops_at_its_budget():
    now = [0.0]

    def clock():
        return now[0]

    def slow():
        now[0] += 1.0  # each call takes a second of the fake clock

    calls = []
    t = _autotune.measure_cpu(lambda: (calls.append(1), slow()), (), clock=clock)
    assert t == 1000.0
    assert len(calls) == 1 + _autotune.CPU_MIN_REPS


def test_training_on_cpu_under_auto_matches_reference(cpu_auto):
    """A forward and backward through auto (the cpu kernel or dense for the products, whichever measured faster)
    give the reference's output and gradients."""
    torch.manual_seed(1)
    layer = perfkern.SparseLoRALinear.from_linear(torch.nn.Linear(64, 48), rank=4, lazy=False)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(5, 64, requires_grad=True)
    grads = []
    for backend in ("auto", "reference"):
        with perfkern.use_backend(backend):
            y = layer(x)
            y.square().sum().backward()
        grads.append([y.detach(), x.grad.clone(), *(p.grad.clone() for p in layer.parameters() if p.grad is not None)])
        x.grad = None
        layer.zero_grad(set_to_none=True)
    assert len(grads[0]) == len(grads[1])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_backend_fixture_covers_cpu():
    assert "cpu" in _dispatch.BACKENDS
    assert ops.MM.has("cpu") and not ops.WEIGHT_GRAD.has("cpu")
