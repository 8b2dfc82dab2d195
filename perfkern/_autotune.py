"""Per-shape measurement for ``auto`` (DESIGN §1: the fastest available backend for the shape, with a dense fallback
whenever sparse would be slower), on a GPU and on the CPU.

This module measures and keeps the tables; ``perfkern._dispatch`` decides, and calls ``choose`` with the
candidates that can run (it sits above this module, which knows nothing of ops or backends beyond the callables
it is handed). An op opts in with a ``Tuning`` on its ``OpImpls``. Under ``auto``, the first call of a shape runs
every candidate (the op's available backends in its preference order, then ``dense``) on scratch outputs, times
each (CUDA events on a GPU, the wall clock on the CPU) and remembers the fastest for the process. A shape is the key
``TuneKey``: op, device (on the CPU: its model and torch's thread count), dtype, M rounded up to a power of two, N,
K, the adapter rank rounded likewise, whether there is a bias, and whether the weight was unchanged since the
previous call.

Where a choice comes from, in order: this process's earlier choice; the ``PERFKERN_TUNE_CACHE`` file; a
measurement (unless ``PERFKERN_AUTOTUNE=0``, or a CUDA graph is being captured, or torch.compile is tracing);
else the table shipped for the device under ``perfkern/dispatch_tables/``; else the static preference order.
A measurement on the user's own machine outranks the shipped table, which was taken on another: with measuring on,
a shipped choice only stands in until a call of the shape can be timed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from perfkern._errors import BackendUnavailableError

_ENV = "PERFKERN_AUTOTUNE"
_CACHE_ENV = "PERFKERN_TUNE_CACHE"
TABLE_DIR = Path(__file__).resolve().parent / "dispatch_tables"
FORMAT = 1
WARMUP = 3
REPS = 10
# On the CPU a candidate's timing stops after this many seconds (at least CPU_MIN_REPS runs): the reference can take
# a tenth of a second per call at M = 128.
CPU_BUDGET_S = 0.25
CPU_MIN_REPS = 3

_log = logging.getLogger("perfkern")


class TuneKey(NamedTuple):
    """The shape class a choice holds for."""

    op: str
    device: str  # normalized device name, as ``normalize_device_name`` gives
    dtype: str  # "bfloat16"
    m: int  # rows of the product, rounded up to a power of two
    n: int
    k: int
    rank: int  # the low-rank adapter's width rounded up to a power of two; 0 without an adapter
    bias: bool
    # The weight is the one the previous call saw, unchanged (a frozen weight): a backend may then reuse what it
    # derived from it. A weight that changes between calls (training, a copy built per call) makes every call
    # pay the derivation, and the candidates are timed that way.
    steady: bool = False


_FIELD_KINDS = (str, str, str, int, int, int, int, bool, bool)


@dataclass(frozen=True)
class Decision:
    """What ran for a key and why: the winner, the median milliseconds of every candidate that was measured
    (empty when the choice came from the shipped table), and ``source``: ``"measured"``, ``"tune cache"`` or
    ``"shipped table"``."""

    winner: str
    times_ms: dict[str, float]
    source: str


@dataclass(frozen=True)
class Tuning:
    """How an op takes part in per-shape tuning.

    ``shape(*args)`` gives (dtype, m, n, k, rank, has_bias, steady) of a call of the op's implementations (steady:
    see ``TuneKey``); ``outputs`` are the positions of the output arguments, cloned for the timed runs so the real
    outputs are written by the winner only; ``release(*args)``, if given, frees what the dense candidate cached for
    the call when it lost.
    """

    shape: Callable[..., tuple[torch.dtype, int, int, int, int, bool, bool]]
    outputs: tuple[int, ...]
    release: Callable[..., None] | None = None


_decisions: dict[TuneKey, Decision] = {}
_tables: dict[Path, dict[TuneKey, Decision]] = {}


def autotune_report() -> dict[TuneKey, Decision]:
    """The choices ``auto`` made by shape in this process: for each ``TuneKey``, the backend that runs it, the
    time of every candidate when it was measured here or in the tune cache, and where the choice came from."""
    return dict(_decisions)


_generation = 0


def generation() -> int:
    """Changes whenever choices are forgotten (``reset``), so that what a caller derived from them is too."""
    return _generation


def reset() -> None:
    """Forget every choice and every table read, so the next call of each shape chooses again."""
    global _generation
    _decisions.clear()
    _tables.clear()
    _generation += 1


def autotune_enabled() -> bool:
    """``PERFKERN_AUTOTUNE``: 1 (default) measures shapes on first use, 0 never measures."""
    raw = os.environ.get(_ENV, "1").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"{_ENV} must be 0 or 1, got {raw!r}")
    return raw != "0"


def normalize_device_name(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia_h100_80gb_hbm3"``: the key and the shipped table's file name."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@functools.cache
def _cuda_device_name(index: int) -> str:
    return normalize_device_name(torch.cuda.get_device_name(index))


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.cache
def _cpu_device_name(threads: int) -> str:
    return normalize_device_name(f"cpu {_cpu_model()} {threads}t")


def device_name(device: torch.device) -> str:
    if device.type == "cpu":
        # Timings on the CPU depend on the threads torch (and so the CPU kernels) are given.
        return _cpu_device_name(torch.get_num_threads())
    return _cuda_device_name(device.index if device.index is not None else torch.cuda.current_device())


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def tune_key(op: str, tuning: Tuning, device: torch.device, args: Sequence) -> TuneKey | None:
    """The key of a call of ``op``, or None for an empty product (nothing to measure, and its time says nothing
    about M=1)."""
    dtype, m, n, k, rank, bias, steady = tuning.shape(*args)
    if m == 0 or n == 0 or k == 0:
        return None
    rank = _pow2(rank) if rank else 0
    dtype_name = str(dtype).removeprefix("torch.")
    return TuneKey(op, device_name(device), dtype_name, _pow2(m), n, k, rank, bias, steady)


def _may_measure(device: torch.device) -> bool:
    # Timing synchronizes the device, which a CUDA graph capture forbids; under tracing there is no call to time.
    if torch.compiler.is_compiling():
        return False
    return device.type == "cpu" or not torch.cuda.is_current_stream_capturing()


def measure_cpu(fn: Callable, args: Sequence, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median milliseconds of ``fn(*args)`` by the wall clock, after one warm-up call: at most REPS runs, fewer
    (CPU_MIN_REPS at least) once CPU_BUDGET_S is spent."""
    fn(*args)
    times = []
    start = clock()
    while len(times) < REPS and (len(times) < CPU_MIN_REPS or clock() - start < CPU_BUDGET_S):
        t0 = clock()
        fn(*args)
        times.append((clock() - t0) * 1e3)
    return statistics.median(times)


def measure(fn: Callable, args: Sequence, device: torch.device) -> float:
    """Median milliseconds of ``fn(*args)``: on a GPU on the current stream of ``device``, by CUDA events, after
    warmup; on the CPU by the wall clock (``measure_cpu``). Module-level so that tests can replace it with fake
    timings."""
    if device.type == "cpu":
        return measure_cpu(fn, args)
    with torch.cuda.device(device):
        for _ in range(WARMUP):
            fn(*args)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
        for start, end in events:
            start.record()
            fn(*args)
            end.record()
        events[-1][1].synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _measure_all(
    op: str, tuning: Tuning, device: torch.device, args: Sequence, candidates: dict[str, Callable], static: str
) -> Decision:
    scratch = list(args)
    for i in tuning.outputs:
        scratch[i] = args[i].clone()
    times: dict[str, float] = {}
    for backend, fn in candidates.items():
        try:
            # The first run also tells whether the backend takes this call at all (dtype, alignment), and builds
            # what a backend caches per weight, so the timed runs see its steady state.
            fn(*scratch)
        except BackendUnavailableError as err:
            _log.debug("perfkern::%s: %s skipped: %s", op, backend, err)
            continue
        times[backend] = measure(fn, scratch, device)
    winner = min(times, key=times.__getitem__) if times else static
    if winner != "dense" and "dense" in times and tuning.release is not None:
        tuning.release(*args)
    return Decision(winner, times, "measured")


def choose(op: str, tuning: Tuning, device: torch.device, args: Sequence, candidates: dict[str, Callable]) -> str:
    """The backend to run this call of ``op`` on, for ``device`` (CUDA or CPU), among ``candidates`` (backend name ->
    implementation, in the op's preference order, ``"dense"`` last where the op has it; the first is the static
    choice); measured on first use per key."""
    return choose_final(op, tuning, device, args, candidates)[0]


def choose_final(
    op: str, tuning: Tuning, device: torch.device, args: Sequence, candidates: dict[str, Callable]
) -> tuple[str, bool]:
    """``choose``, and whether the choice is this process's decision for the key (it then stands until ``reset``;
    a stand-in, e.g. under tracing, is not final)."""
    backend = _choose(op, tuning, device, args, candidates)
    key = tune_key(op, tuning, device, args)
    return backend, key is not None and key in _decisions


def _choose(op: str, tuning: Tuning, device: torch.device, args: Sequence, candidates: dict[str, Callable]) -> str:
    enabled = autotune_enabled()
    key = tune_key(op, tuning, device, args)
    if key is not None and key in _decisions:
        return _decisions[key].winner
    static = next((b for b in candidates if b != "dense"), "reference")
    if key is None:
        return static
    names = list(candidates)
    path = _cache_path()
    decision = _lookup(path, "tune cache", key, names) if path is not None else None
    if decision is None and enabled and _may_measure(device):
        decision = _measure_all(op, tuning, device, args, candidates, static)
        if _log.isEnabledFor(logging.DEBUG):
            times = ", ".join(f"{b} {t:.4f} ms" for b, t in decision.times_ms.items())
            _log.debug("perfkern::%s %s: %s; %s runs", op, _describe(key), times, decision.winner)
        if path is not None:
            _save(path, key, decision)
    if decision is None:
        decision = _lookup(TABLE_DIR / f"{key.device}.json", "shipped table", key, names)
        if decision is None or enabled:
            # With measuring on, a shipped choice only stands in until a call of this shape can be timed.
            return static if decision is None else decision.winner
    _decisions[key] = decision
    return decision.winner


def _describe(key: TuneKey) -> str:
    bias = " bias" if key.bias else ""
    steady = " steady weight" if key.steady else ""
    return f"[{key.device} {key.dtype} M<={key.m} N={key.n} K={key.k} r<={key.rank}{bias}{steady}]"


# Tables: the tune cache a user names and the tables shipped with the package share one JSON format,
# {"format": 1, "decisions": [{"op", "device", "dtype", "m", "n", "k", "rank", "bias", "steady", "winner",
# "times_ms"}, ...]},
# so a tune cache written on a GPU can be shipped as that GPU's table as it is.


def _cache_path() -> Path | None:
    raw = os.environ.get(_CACHE_ENV, "").strip()
    return Path(raw).expanduser() if raw else None


def _lookup(path: Path, source: str, key: TuneKey, candidates: list[str]) -> Decision | None:
    if path not in _tables:
        _tables[path] = read_table(path, source) if path.exists() else {}
    decision = _tables[path].get(key)
    if decision is not None and decision.winner not in candidates:
        _log.debug("perfkern: %s names %s for %s, which cannot run here", path, decision.winner, _describe(key))
        return None
    return decision


def read_table(path: Path, source: str) -> dict[TuneKey, Decision]:
    """The decisions in a tune table file, each marked as coming from ``source``."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format must be {FORMAT}, got {data.get('format')!r}")
        decisions = {}
        for record in data["decisions"]:
            key = TuneKey(*(kind(record[name]) for name, kind in zip(TuneKey._fields, _FIELD_KINDS, strict=True)))
            times = {str(b): float(t) for b, t in record.get("times_ms", {}).items()}
            decisions[key] = Decision(str(record["winner"]), times, source)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a perfkern tune table ({type(err).__name__}: {err})") from err
    return decisions


def write_table(path: Path, decisions: dict[TuneKey, Decision]) -> None:
    """Write ``decisions`` to ``path`` atomically (a reader sees the old file or the new one, never a part)."""
    records = [{**key._asdict(), "winner": d.winner, "times_ms": d.times_ms} for key, d in decisions.items()]
    text = json.dumps({"format": FORMAT, "decisions": records}, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _save(path: Path, key: TuneKey, decision: Decision) -> None:
    # Re-read first, so the choices other processes added since this one read the file are kept.
    decisions = read_table(path, "tune cache") if path.exists() else {}
    decisions[key] = decision
    try:
        write_table(path, decisions)
    except OSError as err:
        warnings.warn(f"perfkern could not write the tune cache {path} ({err}); choices stay in memory", stacklevel=2)
        return
    _tables[path] = {k: Decision(d.winner, d.times_ms, "tune cache") for k, d in decisions.items()}
