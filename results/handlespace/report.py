#!/usr/bin/env python3
"""Collects the handlespace criterion results into criterion.csv, table.md and scaling.png.

Usage: python3 results/handlespace/report.py [CRITERION_DIR]
(default: $CARGO_TARGET_DIR/criterion, else target/criterion). Uses the median estimate of
each benchmark. owner_iter and take_over run over every PE of the owner: they are divided by
the number of PEs to give a per-PE time.
"""
import csv
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LAYOUTS = ["1x10", "1x1000", "1x100000", "1x1000000", "100000x10"]
SIZE = {"1x10": 10, "1x1000": 1000, "1x100000": 100_000, "1x1000000": 1_000_000, "100000x10": 1_000_000}
POLICIES = ["rr", "wrr", "rand", "wrand", "prio", "lu", "lud", "plu", "rlu"]
NAMES = {"rr": "Round Robin", "wrr": "Weighted Round Robin", "rand": "Random", "wrand": "Weighted Random",
         "prio": "Priority", "lu": "Least Used", "lud": "Least Used w/ Degradation",
         "plu": "Priority Least Used", "rlu": "Randomized Least Used"}
PER_PE = {"owner_iter", "take_over"}


def load(root):
    rows = []
    for group in sorted(os.listdir(root)):
        gdir = os.path.join(root, group)
        if not os.path.isdir(gdir) or group == "report":
            continue
        for fn in sorted(os.listdir(gdir)):
            for layout in LAYOUTS:
                path = os.path.join(gdir, fn, layout, "new", "estimates.json")
                if not os.path.exists(path):
                    continue
                with open(path) as f:
                    est = json.load(f)
                ns = est["median"]["point_estimate"]
                lo = est["median"]["confidence_interval"]["lower_bound"]
                hi = est["median"]["confidence_interval"]["upper_bound"]
                div = SIZE[layout] if group in PER_PE else 1
                rows.append({"group": group, "function": fn, "layout": layout,
                             "ns_per_op": ns / div, "ns_low": lo / div, "ns_high": hi / div,
                             "mops_per_s": 1e3 / (ns / div)})
    return rows


def table(rows):
    by = {(r["group"], r["function"], r["layout"]): r for r in rows}
    out = []
    head = "| | " + " | ".join(["10", "1,000", "100,000", "1,000,000", "100,000 pools x 10"]) + " |"
    sep = "|---" * 6 + "|"

    def line(label, group, fn):
        cells = []
        for l in LAYOUTS:
            r = by.get((group, fn, l))
            cells.append(f"{r['ns_per_op']:.0f} ns ({r['mops_per_s']:.1f} M/s)" if r else "-")
        return f"| {label} | " + " | ".join(cells) + " |"

    for n in (3, 1):
        out.append(f"\n**Resolve, N = {n}** (time per resolution; PEs per pool across)\n")
        out.append(head)
        out.append(sep)
        for p in POLICIES:
            out.append(line(NAMES[p], f"resolve_n{n}", p))
    out.append("\n**Registration and removal** (time per operation)\n")
    out.append(head)
    out.append(sep)
    for g, label in [("register", "register"), ("reregister", "re-register"), ("deregister", "deregister")]:
        for p in ["rr", "wrand", "lu"]:
            out.append(line(f"{label} ({NAMES[p]})", g, p))
    out.append(line("expire (per PE expired)", "expire", "rr"))
    out.append(line("owner checksum (read)", "owner_checksum", "rr"))
    out.append(line("iterate owner's PEs (per PE)", "owner_iter", "rr"))
    out.append(line("takeover (per PE moved)", "take_over", "rr"))
    return "\n".join(out) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = [10, 1000, 100_000, 1_000_000]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    by = {(r["group"], r["function"], r["layout"]): r["ns_per_op"] for r in rows}
    ax = axes[0]
    for p in POLICIES:
        ys = [by.get(("resolve_n3", p, l)) for l in LAYOUTS[:4]]
        if all(y is not None for y in ys):
            ax.plot(sizes, ys, marker="o", label=NAMES[p])
    ax.axhline(200, color="grey", ls="--", lw=1)
    ax.text(2e4, 210, "target: 5 M/s (200 ns)", color="grey", fontsize=8)
    ax.axhline(600, color="grey", ls=":", lw=1)
    ax.text(2e4, 620, "3x of target at 1M PEs (600 ns)", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("PEs in the pool")
    ax.set_ylabel("ns per resolution (N = 3)")
    ax.set_title("Handle resolution, N = 3")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    ax = axes[1]
    for g, fn, label in [("register", "rr", "register (RR)"), ("register", "lu", "register (LU)"),
                         ("reregister", "lu", "re-register (LU)"), ("deregister", "rr", "deregister (RR)"),
                         ("deregister", "lu", "deregister (LU)"), ("expire", "rr", "expire, per PE"),
                         ("owner_iter", "rr", "iterate owner, per PE"), ("take_over", "rr", "takeover, per PE")]:
        ys = [by.get((g, fn, l)) for l in LAYOUTS[:4]]
        if all(y is not None for y in ys):
            ax.plot(sizes, ys, marker="o", label=label)
    ax.axhline(500, color="grey", ls="--", lw=1)
    ax.text(2e4, 520, "register target: 2 M/s (500 ns)", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("PEs in the pool")
    ax.set_ylabel("ns per operation")
    ax.set_title("Updates, expiry and owners")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    rows = load(root)
    with open(os.path.join(HERE, "criterion.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(HERE, "table.md"), "w") as f:
        f.write(table(rows))
    plot(rows, os.path.join(HERE, "scaling.png"))
    print(f"{len(rows)} results -> criterion.csv, table.md, scaling.png")


if __name__ == "__main__":
    main()
