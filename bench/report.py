"""Print the table of a pytest-benchmark JSON written by ``pytest bench/ --benchmark-only --benchmark-json=F``.

Usage: ``python bench/report.py RESULTS.json``. Rows of the reference provider are marked: the reference is the
pure-PyTorch truth, so its ratio to a baseline is no kernel speedup. ``python bench/report.py --cpu-markdown
RESULTS.json`` prints the CPU benchmark's records (``bench/bench_sparse24_cpu.py``) as the README's table."""

import json
import sys

USAGE = (
    "usage: python bench/report.py [--cpu-markdown] RESULTS.json  (written by pytest bench/ --benchmark-only "
    "--benchmark-json=...)"
)
REFERENCE = "reference"
MARK = "†"
NOTE = f"{MARK} {REFERENCE}: the pure-PyTorch truth, not a kernel; its ratio to a baseline is no kernel speedup"


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    rows = [b["extra_info"] for b in data["benchmarks"] if "op" in b.get("extra_info", {})]
    if not rows:
        print("no perfkern records")
        return
    print(f"device: {rows[0]['device']}  commit: {data.get('commit_info', {}).get('id', '?')[:10]}  "
          f"date: {data.get('datetime', '?')[:10]}")  # fmt: skip
    header = (
        f"{'op':<18} {'shape':<12} {'provider':<10} {'ms':>9} {'GB/s':>8} {'baseline ms':>12} {'speedup':>8}  baseline"
    )
    print(header)
    print("-" * len(header))
    marked = False
    for r in rows:
        if r["provider"] == REFERENCE:
            r, marked = {**r, "provider": REFERENCE + MARK}, True
        gbps = f"{r['gbps']:.0f}" if "gbps" in r else "-"
        if "baseline" not in r:
            rate = f"{r['tflops']:.2f} TFLOP/s" if "tflops" in r else ""
            print(f"{r['op']:<18} {r['shape']:<12} {r['provider']:<10} {r['ms']:>9.3f} {gbps:>8} {'':>22}  {rate}")
            continue
        print(f"{r['op']:<18} {r['shape']:<12} {r['provider']:<10} {r['ms']:>9.3f} {gbps:>8} "
              f"{r['baseline_ms']:>12.3f} {r['speedup']:>7.2f}x  {r['baseline']}")  # fmt: skip
        for name, other in r.get("others", {}).items():
            print(f"{'':<42} {'':>9} {'':>8} {other['ms']:>12.3f} {other['speedup']:>7.2f}x  {name}")
    if marked:
        print(NOTE)


def cpu_markdown(path: str) -> None:
    """The CPU records as the README's markdown table: one row per weight, M and dtype."""
    with open(path) as f:
        data = json.load(f)
    rows = [b["extra_info"] for b in data["benchmarks"] if b.get("extra_info", {}).get("op", "").startswith("cpu ")]
    first, commit, date = rows[0], data.get("commit_info", {}).get("id", "?")[:7], data.get("datetime", "?")[:10]
    print(f"device: {first['device']}, {first['threads']} threads, torch {first['torch']}, isa {first['isa']}, "
          f"read bandwidth {first['read_gbps']:.1f} GB/s, commit {commit}, date {date}")  # fmt: skip
    print("| weight N×K | M | dtype | kernel ms | vs `F.linear` | vs own dense kernel | of read bandwidth | "
          "in cache: vs own dense | `auto` vs `F.linear` |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    dtypes = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    for r in rows:
        m, n, k = r["shape"].split("x")
        dtype = dtypes.get(r["op"].split()[-1], r["op"].split()[-1])
        bandwidth = f"{r['floor_fraction']:.0%}" if int(m) < 128 else ""
        hot = f"{r['hot_vs_own_dense']:.2f}×" if r.get("hot_vs_own_dense") else ""
        auto = f"{r['auto_vs_linear']:.2f}× ({r['auto_backend']})" if r.get("auto_vs_linear") else ""
        print(f"| {n}×{k} | {m} | {dtype} | {r['ms']:.2f} | {r['speedup']:.2f}× | {r['vs_own_dense']:.2f}× | "
              f"{bandwidth} | {hot} | {auto} |")  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--cpu-markdown":
        cpu_markdown(args[1])
    elif len(args) == 1 and not args[0].startswith("--"):
        main(args[0])
    else:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
