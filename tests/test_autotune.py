"""Per-shape choice of ``auto`` on a GPU (DESIGN §1): the fastest measured candidate wins, dense included; each
shape is timed once; no timing under graph capture or compile tracing; the tune cache and shipped tables; and the
dense backend's numerics against the reference.

The choice is exercised without a GPU: the device is named "cuda" while the tensors stay on the CPU, the device
name and the timer are replaced, and the candidates are plain PyTorch functions."""

import json

import pytest
import torch
from tolerances import assert_within_torch_error

import perfkern
from perfkern import _autotune, _dispatch
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

CUDA = torch.device("cuda")
MARKS = {"reference": 1.0, "triton": 2.0, "dense": 3.0}


@pytest.fixture(autouse=True)
def _forget_the_fake_op():
    """The fake op registers itself like a real one; later tests (the README's op list) must not see it."""
    yield
    _dispatch._ops.pop("fake_mm", None)
    _dispatch._last.pop("fake_mm", None)


def _fake_impl(name, declines=False):
    def impl(x, out):
        if declines:
            raise _dispatch.BackendUnavailableError(f"{name} declines this call")
        out.fill_(MARKS[name])

    return impl


def _fake_op(declines=()):
    """An op whose backends each write their own mark into the output."""
    impls = {name: _fake_impl(name, name in declines) for name in MARKS}
    return _dispatch.OpImpls(
        "fake_mm",
        impls["reference"],
        impls["triton"],
        preference=("triton", "reference"),
        dense=impls["dense"],
        tuning=_autotune.Tuning(lambda x, out: (x.dtype, x.shape[0], out.shape[1], x.shape[1], 0, False, False), (1,)),
    )


class FakeTimer:
    """Stands in for ``_autotune.measure``: runs the candidate once, returns the time given for its backend."""

    def __init__(self, impls, **times_ms):
        self.times = {impls.get(name): t for name, t in times_ms.items()}
        self.names = {impls.get(name): name for name in times_ms}
        self.measured = []

    def __call__(self, fn, args, device):
        fn(*args)
        self.measured.append(self.names[fn])
        return self.times[fn]


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """A fake CUDA device named "test_gpu", with no tables and no tune cache, and no choice made yet."""
    monkeypatch.setattr(_autotune, "device_name", lambda device: "test_gpu")
    monkeypatch.setattr(_autotune, "TABLE_DIR", tmp_path / "tables")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    for name in ("PERFKERN_BACKEND", "PERFKERN_AUTOTUNE", "PERFKERN_TUNE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    _autotune.reset()
    yield CUDA
    _autotune.reset()


def _timer(monkeypatch, impls, **times_ms):
    timer = FakeTimer(impls, **times_ms)
    monkeypatch.setattr(_autotune, "measure", timer)
    return timer


def _forbid_timing(monkeypatch):
    def fail(fn, args, device):
        raise AssertionError("timed a call that must not be timed")

    monkeypatch.setattr(_autotune, "measure", fail)


def _call(impls, m=5, k=32, n=16, dtype=torch.float32):
    out = torch.full((m, n), float("nan"), dtype=dtype)
    _dispatch.run(impls, CUDA, torch.randn(m, k).to(dtype), out)
    return out


def _key(m=8, k=32, n=16, dtype="float32", op="fake_mm"):
    return _autotune.TuneKey(op, "test_gpu", dtype, m, n, k, 0, False)


@pytest.mark.parametrize(
    "times,winner",
    [
        pytest.param({"triton": 2.0, "reference": 5.0, "dense": 1.0}, "dense", id="dense-fastest"),
        pytest.param({"triton": 1.0, "reference": 5.0, "dense": 2.0}, "triton", id="triton-fastest"),
        pytest.param({"triton": 2.0, "reference": 2.0, "dense": 2.0}, "triton", id="tie-goes-to-preference"),
    ],
)
def test_fastest_candidate_wins_and_alone_writes_the_output(gpu, monkeypatch, times, winner):
    impls = _fake_op()
    timer = _timer(monkeypatch, impls, **times)
    out = _call(impls)
    assert timer.measured == ["triton", "reference", "dense"]
    assert perfkern.last_backend("fake_mm") == winner
    # The losers ran on scratch copies: the output holds the winner's mark and nothing else.
    assert torch.equal(out, torch.full_like(out, MARKS[winner]))
    assert perfkern.autotune_report() == {_key(): _autotune.Decision(winner, times, "measured")}


def test_each_shape_is_timed_once(gpu, monkeypatch):
    impls = _fake_op()
    timer = _timer(monkeypatch, impls, triton=2.0, reference=5.0, dense=1.0)
    _call(impls, m=5)
    _call(impls, m=7)  # rounds up to M=8 as well
    _call(impls, m=5)
    assert len(timer.measured) == 3
    _call(impls, m=9)
    _call(impls, m=5, dtype=torch.bfloat16)
    assert len(timer.measured) == 9
    assert set(perfkern.autotune_report()) == {_key(m=8), _key(m=16), _key(m=8, dtype="bfloat16")}
    assert perfkern.last_backend("fake_mm") == "dense"


def test_empty_products_are_not_timed(gpu, monkeypatch):
    _forbid_timing(monkeypatch)
    impls = _fake_op()
    _call(impls, m=0)
    assert perfkern.last_backend("fake_mm") == "triton"
    assert perfkern.autotune_report() == {}


def test_a_candidate_that_declines_the_call_is_skipped(gpu, monkeypatch):
    impls = _fake_op(declines=("triton",))
    timer = _timer(monkeypatch, impls, triton=0.1, reference=5.0, dense=1.0)
    out = _call(impls)
    assert timer.measured == ["reference", "dense"]
    assert perfkern.autotune_report()[_key()].times_ms == {"reference": 5.0, "dense": 1.0}
    assert torch.equal(out, torch.full_like(out, MARKS["dense"]))


@pytest.mark.parametrize("phase", ["capture", "compile"])
def test_no_timing_under_graph_capture_or_compile(gpu, monkeypatch, phase):
    impls = _fake_op()
    timer = _timer(monkeypatch, impls, triton=2.0, reference=5.0, dense=1.0)
    stopped = {"flag": True}
    if phase == "capture":
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: stopped["flag"])
    else:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: stopped["flag"])
    _call(impls)
    assert timer.measured == []
    assert perfkern.last_backend("fake_mm") == "triton"  # the static preference
    assert perfkern.autotune_report() == {}
    stopped["flag"] = False
    _call(impls)
    assert perfkern.last_backend("fake_mm") == "dense"
    stopped["flag"] = True
    _call(impls)
    assert perfkern.last_backend("fake_mm") == "dense"  # remembered, not timed again
    assert len(timer.measured) == 3


def test_autotune_env_variable(gpu, monkeypatch):
    impls = _fake_op()
    monkeypatch.setenv("PERFKERN_AUTOTUNE", "yes")
    with pytest.raises(ValueError, match="PERFKERN_AUTOTUNE must be 0 or 1, got 'yes'"):
        _call(impls)
    monkeypatch.setenv("PERFKERN_AUTOTUNE", "0")
    _forbid_timing(monkeypatch)
    _call(impls)
    assert perfkern.last_backend("fake_mm") == "triton"
    assert perfkern.autotune_report() == {}


def test_explicit_backend_is_never_tuned(gpu, monkeypatch):
    _forbid_timing(monkeypatch)
    impls = _fake_op()
    with perfkern.use_backend("reference"):
        out = _call(impls)
    assert torch.equal(out, torch.full_like(out, MARKS["reference"]))


def test_tune_cache_round_trip(gpu, monkeypatch, tmp_path):
    path = tmp_path / "cache" / "tune.json"
    monkeypatch.setenv("PERFKERN_TUNE_CACHE", str(path))
    impls = _fake_op()
    _timer(monkeypatch, impls, triton=2.0, reference=5.0, dense=1.0)
    _call(impls, m=5)
    _call(impls, m=9)
    records = json.loads(path.read_text())
    assert records["format"] == 1
    assert records["decisions"][0] == {
        "op": "fake_mm", "device": "test_gpu", "dtype": "float32", "m": 8, "n": 16, "k": 32, "rank": 0,
        "bias": False, "steady": False, "winner": "dense", "times_ms": {"triton": 2.0, "reference": 5.0, "dense": 1.0},
    }  # fmt: skip
    assert [r["m"] for r in records["decisions"]] == [8, 16]
    assert list(path.parent.iterdir()) == [path]  # the temporary file of the atomic write is gone

    # A later process reads the winners instead of timing them.
    _autotune.reset()
    _forbid_timing(monkeypatch)
    out = _call(impls, m=6)
    assert torch.equal(out, torch.full_like(out, MARKS["dense"]))
    decision = perfkern.autotune_report()[_key(m=8)]
    assert (decision.winner, decision.source, decision.times_ms["dense"]) == ("dense", "tune cache", 1.0)

    # Decisions another process wrote meanwhile survive this one's write.
    records["decisions"].append({**records["decisions"][0], "n": 48, "winner": "reference"})
    path.write_text(json.dumps(records))
    _timer(monkeypatch, impls, triton=1.0, reference=5.0, dense=2.0)
    _call(impls, m=40)
    assert sorted((r["m"], r["n"], r["winner"]) for r in json.loads(path.read_text())["decisions"]) == [
        (8, 16, "dense"), (8, 48, "reference"), (16, 16, "dense"), (64, 16, "triton"),
    ]  # fmt: skip


def test_a_broken_tune_cache_is_reported(gpu, monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    path.write_text('{"format": 1, "decisions": [{"op": "fake_mm"}]}')
    monkeypatch.setenv("PERFKERN_TUNE_CACHE", str(path))
    with pytest.raises(ValueError, match="tune.json is not a perfkern tune table"):
        _call(_fake_op())


def _ship(table_dir, winner, **key_fields):
    table_dir.mkdir(parents=True, exist_ok=True)
    record = {**_key(**key_fields)._asdict(), "winner": winner, "times_ms": {}}
    (table_dir / "test_gpu.json").write_text(json.dumps({"format": 1, "decisions": [record]}))


def test_shipped_table_is_used_where_nothing_is_measured(gpu, monkeypatch):
    impls = _fake_op()
    _ship(_autotune.TABLE_DIR, "reference")
    monkeypatch.setenv("PERFKERN_AUTOTUNE", "0")
    _forbid_timing(monkeypatch)
    out = _call(impls)
    assert torch.equal(out, torch.full_like(out, MARKS["reference"]))
    assert perfkern.autotune_report() == {_key(): _autotune.Decision("reference", {}, "shipped table")}
    _call(impls, m=20)  # a shape the table does not hold: the static preference
    assert perfkern.last_backend("fake_mm") == "triton"


def test_a_measurement_outranks_the_shipped_table(gpu, monkeypatch):
    impls = _fake_op()
    _ship(_autotune.TABLE_DIR, "reference")
    capturing = {"flag": True}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing["flag"])
    timer = _timer(monkeypatch, impls, triton=2.0, reference=5.0, dense=1.0)
    _call(impls)
    assert perfkern.last_backend("fake_mm") == "reference"  # the table stands in while timing cannot run
    capturing["flag"] = False
    _call(impls)
    assert perfkern.last_backend("fake_mm") == "dense"
    assert len(timer.measured) == 3


def test_a_table_naming_a_backend_that_cannot_run_is_ignored(gpu, monkeypatch):
    impls = _fake_op()
    _ship(_autotune.TABLE_DIR, "cuda")  # the fake op has no cuda implementation
    monkeypatch.setenv("PERFKERN_AUTOTUNE", "0")
    _call(impls)
    assert perfkern.last_backend("fake_mm") == "triton"


def test_device_names_are_normalized():
    assert _autotune.normalize_device_name("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert _autotune.normalize_device_name("NVIDIA A100-SXM4-40GB") == "nvidia_a100_sxm4_40gb"


# The real ops: dense through auto, and its numerics against the reference.

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MM_SHAPES = [
    pytest.param(1, 16, 32, 1, True, id="M1-N16-K32-r1"),
    pytest.param(7, 33, 48, 3, False, id="M7-N33-K48-r3-nobias"),
    pytest.param(17, 70, 96, 0, True, id="M17-N70-K96-nolora"),
]


def _mm_args(m, n, k, r, bias, dtype):
    x = torch.randn(m, k).to(dtype)
    values, meta = ref.compress_2to4((torch.randn(n, k) / k**0.5).to(dtype))
    b = torch.randn(n).to(dtype) if bias else None
    lora_t = torch.randn(m, r).to(dtype) if r else None
    lora_b = torch.randn(r, n).to(dtype).t() if r else None  # a transposed view, as the double-pruned dx passes it
    return x, values, meta, b, lora_t, lora_b, 0.5


def _mm_truth_and_native(x, values, meta, bias, lora_t, lora_b, scale):
    w = ref.decompress_2to4(values, meta)
    truth, native = x.double() @ w.double().t(), x @ w.t()
    if bias is not None:
        truth, native = truth + bias.double(), native + bias
    if lora_t is not None:
        truth = truth + scale * lora_t.double() @ lora_b.double().t()
        native = native + scale * lora_t @ lora_b.t()
    return truth, native


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,r,bias", MM_SHAPES)
def test_dense_mm_matches_reference(m, n, k, r, bias, dtype):
    args = _mm_args(m, n, k, r, bias, dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    ops._dense_mm(*args, out)
    assert_within_torch_error(out, *_mm_truth_and_native(*args), "y")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dense_weight_grad_matches_reference(dtype):
    m, n, k = 19, 24, 48
    dy, x = torch.randn(m, n).to(dtype), torch.randn(m, k).to(dtype)
    _, meta = ref.compress_2to4(torch.randn(n, k))
    out = torch.full((n, k // 2), float("nan"), dtype=dtype)
    ops._dense_weight_grad(dy, x, meta, out)
    truth = ref.gather_2to4(dy.double().t() @ x.double(), meta)
    assert_within_torch_error(out, truth, ref.gather_2to4(dy.t() @ x, meta), "d_values")


def test_dense_weight_cache_follows_in_place_writes():
    values, meta = ref.compress_2to4(torch.randn(16, 64))
    buffer = meta.view(torch.uint8).clone()  # stored as bytes, viewed as int16 at each call, as the layer does
    # A weight not seen unchanged before is decompressed and not kept: it may change before the next call.
    assert not ops.weight_is_steady(values, buffer.view(torch.int16))
    assert torch.equal(ops._dense_weight(values, buffer.view(torch.int16)), ref.decompress_2to4(values, meta))
    assert not hasattr(values.untyped_storage(), "_perfkern_dense")
    ops.mark_weight_seen(values, buffer.view(torch.int16))
    assert ops.weight_is_steady(values, buffer.view(torch.int16))
    first = ops._dense_weight(values, buffer.view(torch.int16))
    assert ops._dense_weight(values, buffer.view(torch.int16)) is first
    values.mul_(2)
    assert not ops.weight_is_steady(values, buffer.view(torch.int16))
    assert torch.equal(ops._dense_weight(values, buffer.view(torch.int16)), ref.decompress_2to4(values, meta))
    ops.mark_weight_seen(values, buffer.view(torch.int16))
    _, other_meta = ref.compress_2to4(torch.randn(16, 64))
    buffer.copy_(other_meta.view(torch.uint8))
    assert torch.equal(ops._dense_weight(values, buffer.view(torch.int16)), ref.decompress_2to4(values, other_meta))
    # A different meta tensor with the same values is never served the other's weight.
    assert torch.equal(ops._dense_weight(values, meta), ref.decompress_2to4(values, meta))


def test_a_weight_is_steady_from_its_second_unchanged_call():
    """The op marks the weight it ran on; a training step's in-place update makes it unsteady again, so the tune
    key (and the dense candidate's timing) tells a frozen weight from one that changes every call."""
    x = torch.randn(3, 32)
    values, meta = ref.compress_2to4(torch.randn(8, 32))
    assert not ops.weight_is_steady(values, meta)
    torch.ops.perfkern.sparse24_mm(x, values, meta, None, None, None, 1.0)
    assert ops.weight_is_steady(values, meta)
    values.add_(1.0)
    assert not ops.weight_is_steady(values, meta)
    assert ops._mm_shape(x, values, meta, None, None, None, 1.0, None)[-1] is False


def test_inference_tensors_are_decompressed_every_call():
    with torch.inference_mode():
        values, meta = ref.compress_2to4(torch.randn(16, 64))
        dense = ops._dense_weight(values, meta)
    assert torch.equal(dense, ref.decompress_2to4(values, meta))
    assert not hasattr(values.untyped_storage(), "_perfkern_dense")


# On a fake device the tensors stay on the CPU, where Triton runs only in the interpreter (and cuda not at all).
fake_device_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the fake-device path needs a CPU-only run")


@fake_device_only
@pytest.mark.parametrize("winner", ["dense", "triton"])
def test_auto_runs_the_measured_winner_of_sparse24_mm(gpu, monkeypatch, winner):
    times = {"triton": 2.0, "reference": 5.0, "dense": 3.0, winner: 1.0}
    timer = _timer(monkeypatch, ops.MM, **times)
    args = _mm_args(7, 33, 48, 3, True, torch.float32)
    ops.mark_weight_seen(args[1], args[2])  # a frozen weight on its second call
    out = torch.full((7, 33), float("nan"))
    _dispatch.run(ops.MM, CUDA, *args, out)
    assert timer.measured == ["triton", "reference", "dense"]
    assert perfkern.last_backend("sparse24_mm") == winner
    assert_within_torch_error(out, *_mm_truth_and_native(*args), "y")
    # The dense copy of the weight is kept only where dense won.
    assert hasattr(args[1].untyped_storage(), "_perfkern_dense") == (winner == "dense")
    key = _autotune.TuneKey("sparse24_mm", "test_gpu", "float32", 8, 33, 48, 4, True, True)
    assert perfkern.autotune_report()[key].winner == winner


@fake_device_only
def test_auto_runs_dense_weight_grad_when_it_measures_faster(gpu, monkeypatch):
    _timer(monkeypatch, ops.WEIGHT_GRAD, triton=2.0, reference=5.0, dense=1.0)
    dy, x = torch.randn(19, 24), torch.randn(19, 48)
    _, meta = ref.compress_2to4(torch.randn(24, 48))
    out = torch.full((24, 24), float("nan"))
    _dispatch.run(ops.WEIGHT_GRAD, CUDA, dy, x, meta, out)
    assert perfkern.last_backend("sparse24_weight_grad") == "dense"
    truth = ref.gather_2to4(dy.double().t() @ x.double(), meta)
    assert_within_torch_error(out, truth, ref.gather_2to4(dy.t() @ x, meta), "d_values")


@pytest.mark.gpu
def test_gpu_auto_measures_every_candidate(monkeypatch):
    for name in ("PERFKERN_BACKEND", "PERFKERN_AUTOTUNE", "PERFKERN_TUNE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    _autotune.reset()
    dtype = torch.bfloat16
    args = [t.cuda() if torch.is_tensor(t) else t for t in _mm_args(130, 256, 320, 16, True, dtype)]
    y = torch.ops.perfkern.sparse24_mm(*args)
    (decision,) = perfkern.autotune_report().values()
    assert decision.source == "measured"
    assert {"triton", "dense"} <= set(decision.times_ms)
    assert all(t > 0 for t in decision.times_ms.values())
    assert perfkern.last_backend("sparse24_mm") == decision.winner
    assert_within_torch_error(y, *_mm_truth_and_native(*args), "y")
    _autotune.reset()
