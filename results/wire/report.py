#!/usr/bin/env python3
"""Collects the `benches/wire.rs` criterion results into results/wire/wire.csv and a markdown
table on stdout (paste it into results/wire/README.md).

Usage: python3 results/wire/report.py [CRITERION_DIR]
(default: $CARGO_TARGET_DIR/criterion, else target/criterion). Uses each benchmark's median.
"""
import csv
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "..", "target"))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(target, "criterion")
    rows = []
    for group in ("parse", "emit-repr", "emit-parts"):
        gdir = os.path.join(root, group)
        if not os.path.isdir(gdir):
            continue
        for case in sorted(os.listdir(gdir)):
            new = os.path.join(gdir, case, "new")
            try:
                est = json.load(open(os.path.join(new, "estimates.json")))
                bench = json.load(open(os.path.join(new, "benchmark.json")))
            except OSError:
                continue
            ns = est["median"]["point_estimate"]
            size = (bench.get("throughput") or {}).get("Bytes", 0)
            rows.append((group, case, size, ns, size / ns * 1e9 / 2**20 if ns else 0.0))
    with open(os.path.join(HERE, "wire.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "message", "bytes", "ns_per_message", "MiB_per_s"])
        for r in rows:
            w.writerow([r[0], r[1], r[2], f"{r[3]:.1f}", f"{r[4]:.0f}"])
    print("| operation | message | bytes | ns/message (median) | MiB/s |")
    print("|---|---|---|---|---|")
    for g, c, size, ns, mib in rows:
        print(f"| {g} | {c} | {size} | {ns:.1f} | {mib:.0f} |")


if __name__ == "__main__":
    main()
