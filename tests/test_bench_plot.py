"""bench/plot.py turns a benchmark JSON into the README's plot: records grouped by op and provider, sizes from
shapes, floors left out. Checked on a small JSON of the same structure (no measured numbers involved)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _plot_module():
    spec = importlib.util.spec_from_file_location("bench_plot", ROOT / "bench" / "plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(op, shape, provider, speedup=None):
    info = {"op": op, "shape": shape, "provider": provider, "ms": 1.0, "device": "test device"}
    if speedup is not None:
        info.update(baseline="b", baseline_ms=speedup, speedup=speedup)
    return {"extra_info": info}


def test_series_groups_and_sorts(tmp_path):
    plot = _plot_module()
    data = {
        "datetime": "2026-01-01T00:00:00",
        "commit_info": {"id": "abcdef1234567"},
        "benchmarks": [
            _record("2:4 GEMM", "2048x4096x4096", "triton", 1.2),
            _record("2:4 GEMM", "16x4096x4096", "triton", 1.5),
            _record("2:4 GEMM", "16x4096x4096", "cuda:wgmma.sp", 1.7),
            _record("compress_2to4", "4096x4096", "cuda", 3.0),
            _record("floor: copy", "1073741824", "torch", None),
        ],
    }
    curves = plot.series(data)
    assert set(curves) == {"2:4 GEMM", "compress_2to4"}
    assert curves["2:4 GEMM"]["triton"] == [(16 * 4096 * 4096, 1.5), (2048 * 4096 * 4096, 1.2)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    plot.plot(str(path), str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 1000
