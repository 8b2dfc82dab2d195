"""The main job runs end to end: every variant trains, the table is printed, the plot is written."""

import torch

from perfkern import demo


def test_corpus_is_deterministic_and_plain_text():
    text = demo.corpus(sentences=50)
    assert text == demo.corpus(sentences=50) and text.endswith(".")
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .")


def test_demo_runs_every_variant(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    torch.manual_seed(0)
    code = demo.main(["--steps", "12", "--batch", "4", "--context", "32", "--d-model", "64", "--layers", "1",
                      "--decode-tokens", "3", "--decode-runs", "1", "--plot", str(plot)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for variant in demo.VARIANTS:
        assert any(line.startswith(variant) for line in out.splitlines()), variant
    assert "dendrites per layer [1]" in out
    decode = out.split("inference: greedy generation of 3 tokens, median of 1 runs after warm-up")[1]
    for variant in demo.VARIANTS:
        assert any(line.startswith(variant) for line in decode.splitlines()), f"{variant} has no tokens/s row"
    assert plot.exists() and plot.stat().st_size > 10_000
