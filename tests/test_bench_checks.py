"""The benchmarks hold kernels to the test suite's standards: a wrong result stops a benchmark before it times
(at the tolerances of tests/tolerances.py), the report explains itself, and rows of the reference backend are
never presented as kernel speedups. The benchmark files run here in subprocesses on the CPU (the reference)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_without_an_argument_prints_usage():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python bench/report.py") and "Traceback" not in done.stderr


def _row(provider, speedup):
    return {"extra_info": {"op": "op", "shape": "4x4", "provider": provider, "ms": 1.0, "device": "test device",
                           "baseline": "torch", "baseline_ms": speedup, "speedup": speedup}}  # fmt: skip


def test_reference_rows_are_not_kernel_speedups(tmp_path, capsys):
    report, plot = _bench_module("report"), _bench_module("plot")
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"datetime": "2026-12-01", "benchmarks": [_row("reference", 2.5), _row("triton", 3.0)]}))
    report.main(str(path))
    lines = capsys.readouterr().out.splitlines()
    assert any("reference†" in line and "2.50x" in line for line in lines)
    assert any(" triton " in line and "†" not in line for line in lines)
    assert lines[-1] == report.NOTE
    assert set(plot.series(json.loads(path.read_text()))["op"]) == {"reference (not a kernel)", "triton"}


def test_cpu_markdown_prints_the_records_ratios(tmp_path, capsys):
    report = _bench_module("report")
    info = {"op": "cpu 2:4 mm bfloat16", "shape": "8x11008x4096", "provider": "cpu kernel", "ms": 4.0,
            "device": "test cpu", "threads": 2, "torch": "2.13", "isa": "avx2", "read_gbps": 30.0,
            "speedup": 5.0, "vs_own_dense": 1.25, "floor_fraction": 0.375, "hot_vs_own_dense": 1.5,
            "auto_vs_linear": None, "auto_backend": None}  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"datetime": "2026-12-01T10:00", "commit_info": {"id": "abcdef123"},
                                "benchmarks": [{"extra_info": info}]}))  # fmt: skip
    report.cpu_markdown(str(path))
    lines = capsys.readouterr().out.splitlines()
    assert "commit abcdef1, date 2026-12-01" in lines[0]
    assert lines[-1] == "| 11008×4096 | 8 | bf16 | 4.00 | 5.00× | 1.25× | 38% | 1.50× |  |"


# A plugin loaded into a benchmark run that makes one op 3% wrong: the old checks (atol/rtol 0.05 and 0.1, shapes
# only) let that through; the suite's tolerances do not.
_PLUGIN = textwrap.dedent(
    """
    import perfkern
    from perfkern.ops import pera, sparse24

    _adapter = perfkern.pera_adapter
    perfkern.pera_adapter = lambda *args, **kwargs: 1.03 * _adapter(*args, **kwargs)
    _correlation = perfkern.dendrite_correlation
    perfkern.dendrite_correlation = lambda *args, **kwargs: 1.03 * _correlation(*args, **kwargs)
    _weight_grad = sparse24.WEIGHT_GRAD.reference

    def wrong_weight_grad(dy, x, meta, out):
        _weight_grad(dy, x, meta, out)
        out.mul_(1.03)

    object.__setattr__(sparse24.WEIGHT_GRAD, "reference", wrong_weight_grad)
    """
)


# One case of each, as the CPU shapes of bench/shapes.py name them: the PERA forward, the layer's training step
# (every gradient), the dendrite scores.
TARGETS = ["bench/bench_pera.py::test_forward[256x512x512x4-reference]",
           "bench/bench_sparse24_linear.py::test_train_step[1x1024x1024-reference]",
           "bench/bench_dendrite.py::test_correlation[4x512x4x256-reference-scores]"]  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU shapes of the benchmarks")
def test_a_three_percent_error_stops_the_benchmarks(tmp_path):
    (tmp_path / "wrong_by_three_percent.py").write_text(_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *TARGETS, "--benchmark-only", "-p", "wrong_by_three_percent",
         "-p", "no:cacheprovider", "-q", "--tb=line"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1 and summary.startswith(f"{len(TARGETS)} failed"), done.stdout[-3000:]
    failures = [line for line in done.stdout.splitlines() if "tolerances.py" in line and "> 2 x torch's" in line]
    assert len(failures) == len(TARGETS), done.stdout[-3000:]
