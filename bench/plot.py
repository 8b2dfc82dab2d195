"""Plot speedup against problem size, one panel per op, one line per provider, from a pytest-benchmark JSON
written by ``pytest bench/ --benchmark-only --benchmark-json=F`` (the README's performance plot):

    python bench/plot.py bench/results/<device>-<date>.json [out.png]

Problem size is the product of the shape's dimensions ("2048x4096x4096" -> 2048·4096·4096). Records without a
baseline (the floors) are not plotted; the reference provider's curve is labelled as not a kernel. The title names
the device, date and commit of the run.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The reference backend is the pure-PyTorch truth: its curve is labelled so that nobody reads it as a kernel's.
REFERENCE_LABEL = "reference (not a kernel)"


def series(data: dict) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{op: {provider: [(problem size, speedup), ...] sorted by size}} of the records that have a baseline."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "speedup" not in info or "shape" not in info:
            continue
        size = math.prod(float(d) for d in str(info["shape"]).split("x"))
        provider = REFERENCE_LABEL if info["provider"] == "reference" else info["provider"]
        out[info["op"]][provider].append((size, float(info["speedup"])))
    return {op: {p: sorted(points) for p, points in providers.items()} for op, providers in out.items()}


def plot(path: str, png: str) -> None:
    with open(path) as f:
        data = json.load(f)
    curves = series(data)
    if not curves:
        raise SystemExit(f"{path}: no records with a baseline to plot")
    first = next(b["extra_info"] for b in data["benchmarks"] if "device" in b.get("extra_info", {}))
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (op, providers) in zip(axes.flat, sorted(curves.items()), strict=False):
        for provider, points in sorted(providers.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=provider)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("problem size (product of the shape)")
        ax.set_ylabel("speedup over baseline")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    commit = data.get("commit_info", {}).get("id", "?")[:10]
    fig.suptitle(f"{first['device']}  {data.get('datetime', '?')[:10]}  commit {commit}", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    json_path = sys.argv[1]
    plot(json_path, sys.argv[2] if len(sys.argv) == 3 else json_path.removesuffix(".json") + ".png")
