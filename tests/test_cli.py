"""The command line as people expect it: ``--help`` for the CLI and for ``demo`` (every option with its default, no
reStructuredText markup), ``format``'s check of the sparse product against torch's dense one, the demo's aligned
table, its plot outside any source checkout, with the dendrite phase and validation points."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import perfkern
from perfkern import __main__ as cli
from perfkern import demo

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perfkern", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_with_one_line():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    for name in ("info", "format", "demo"):
        (line,) = [line for line in done.stdout.splitlines() if line.strip().startswith(name + " ")]
        assert len(line.split(maxsplit=1)[1]) > 20
    bad = _run("bogus")
    assert bad.returncode == 2 and "unknown command 'bogus'; one of info, format, demo" in bad.stderr


def test_demo_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as done:
        demo.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":math:" not in text
    options = re.findall(r"^  (--[\w-]+)", text, flags=re.MULTILINE)
    assert set(options) >= {"--variants", "--steps", "--batch", "--context", "--d-model", "--layers", "--rank", "--lr",
                            "--adapter-fraction", "--dendrite-at", "--plot", "--device"}  # fmt: skip
    flat = " ".join(text.split("options:", 1)[1].split())
    for option in options:
        entry = flat.split(option, 1)[1].split(" --", 1)[0]
        assert "(default:" in entry, f"{option} does not state its default"


def test_plot_defaults_outside_a_source_checkout_and_is_ignored_by_git():
    path = Path(demo.DEFAULT_PLOT).resolve()
    assert ROOT not in path.parents and not (path.parent / ".git").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", "perfkern_demo.png"], cwd=ROOT, timeout=60)
    assert ignored.returncode == 0, ".gitignore must cover a plot written into the checkout"


def test_table_columns_line_up():
    results = [
        demo.Result("dense", [], 0.3696, 37725.0, 408832, 408832, 1572864, "torch (dense)", ""),
        demo.Result("dendrites", [], 0.45361, 24864.4, 265728, 245248, 835584, "reference", "dendrites per layer [1]"),
    ]
    lines = demo.table(results).splitlines()
    header = lines[0]
    for column in ("val loss", "ppl", "tokens/s", "params", "trainable", "weights KiB", "vs dense"):
        end = header.index(column) + len(column)
        for row in lines[1:]:
            blank = not row[header.index(column) : end].strip()
            assert blank or row[end - 1] != " ", f"{column!r} is not right-aligned in {row!r}"
            assert row[end : end + 1] in ("", " "), f"{column!r} overflows in {row!r}"
    assert "0.53x" in lines[2]
    start = header.index("backend")
    assert lines[1][start:].startswith("torch (dense)") and lines[2][start:].startswith("reference")


def test_plot_marks_the_dendrite_phase_and_validation_points(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        ax = fig.axes[0]
        drawn["spans"] = [p for p in ax.patches]
        drawn["texts"] = [t.get_text().strip() for t in ax.texts]
        drawn["markers"] = [line for line in ax.lines if line.get_marker() == "o"]
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    args = argparse.Namespace(steps=100, variants=["slope", "dendrites"], adapter_fraction=0.2, dendrite_at=0.5)
    results = [
        demo.Result(v, [(s, 2.0 - s / 100) for s in range(100)], 1.0, 1.0, 1, 1, 1, "reference", "",
                    [(50, 1.6), (100, 1.1)])
        for v in args.variants
    ]  # fmt: skip
    demo.plot(results, str(tmp_path / "curves.png"), args)
    (span,) = drawn["spans"]
    x0, x1 = span.get_x(), span.get_x() + span.get_width()
    assert (x0, x1) == demo.dendrite_phase(args) == (50, 60)
    assert "dendrite phase" in drawn["texts"] and "adapters on" in drawn["texts"]
    assert [list(line.get_xdata()) for line in drawn["markers"]] == [[50, 100], [50, 100]]


def test_format_checks_the_sparse_product_against_torch_dense(capsys):
    with perfkern.use_backend("reference"):
        cli.format_demo()
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "sparse24_linear" in line)
    assert "vs torch dense x @ Wsᵀ" in line and "within" in line
    assert os.environ.get("TRITON_INTERPRET") != "1" or "triton" not in out.split("backend", 1)[-1]
    rows = {row.split()[0]: row.split()[1:] for row in out.split("decompress ms", 1)[1].strip().splitlines()}
    for backend, (compress_ms, decompress_ms) in rows.items():
        for op, cell in (("compress_2to4", compress_ms), ("decompress_2to4", decompress_ms)):
            # A backend without the op (cpu: the product only) shows a dash, every other one a time.
            assert (cell == "-") == (not perfkern._dispatch.implements(op, backend)), (backend, op, cell)
            assert cell == "-" or float(cell) > 0


def test_implements_names_the_backends_of_each_op():
    assert perfkern._dispatch.implements("sparse24_mm", "cpu")
    assert not perfkern._dispatch.implements("compress_2to4", "cpu")
    assert perfkern._dispatch.implements("compress_2to4", "reference")
    with pytest.raises(ValueError, match="backend must be one of .*got 'auto'"):
        perfkern._dispatch.implements("compress_2to4", "auto")
    with pytest.raises(ValueError, match="op must be one of .*got 'nope'"):
        perfkern._dispatch.implements("nope", "cpu")
