"""Print the table of a pytest-benchmark JSON written by ``pytest bench/ --benchmark-only --benchmark-json=F``.

Usage: ``python bench/report.py RESULTS.json``. Rows of the reference provider are marked: the reference is the
pure-PyTorch truth, so its ratio to a baseline is no kernel speedup."""

import json
import sys

USAGE = "usage: python bench/report.py RESULTS.json  (written by pytest bench/ --benchmark-only --benchmark-json=...)"
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
