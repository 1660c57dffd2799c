#!/usr/bin/env python3
"""Alternates handlespace benches (rsplib's anchor bench and builds of ours) on one core and
prints each operation's median and its ratio to the first binary: the quick side-by-side used
for single policies (vs_rsplib.sh runs the whole matrix).

    results/handlespace/ab.py ROUNDS PES POOLS POLICY RESOLUTIONS BIN [BIN...]
    results/handlespace/ab.py 7 1000000 100000 WeightedRandom 1000 <anchor bench> <ours> <ours before>

Each round runs every binary once (`taskset -c 1 BIN PES POOLS POLICY RESOLUTIONS 3`), in
turn, reversing the order every other round so that neither side always runs first. Our bench:
`cargo bench --bench rsplib_workload --no-run` (the executable it names), copied aside for each
build to compare. A binary given as `ENV=value:/path/to/bench` runs with that variable set
(e.g. `RSPLIB_WORKLOAD_RESERVE=1:/tmp/ours`, our bench with its room reserved ahead, as the
registrar's `limits.expected_pes` does), and is named `path+ENV` in the table. With
`RSPLIB_WORKLOAD_FILL_ONLY=1` in the environment our benches stop after the fill (only
`register` is compared, in rounds of about a second).
"""
import os
import re
import statistics
import subprocess
import sys


def main() -> None:
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    rounds, pes, pools, policy, resolutions = sys.argv[1:6]
    bins = sys.argv[6:]
    data: dict[tuple[str, str], list[float]] = {}
    ops: list[str] = []
    for r in range(int(rounds)):
        for b in bins if r % 2 == 0 else bins[::-1]:
            env, path = dict(os.environ), b
            if re.match(r"^\w+=[^:]*:", b):
                var, path = b.split(":", 1)
                env[var.split("=", 1)[0]] = var.split("=", 1)[1]
            cmd = ["taskset", "-c", "1", path, pes, pools, policy, resolutions, "3"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            for line in out.splitlines():
                m = re.search(r"pools=\S+\s+(\S+(?:\(\d+\))?)\s+([\d.]+)", line)
                if m:
                    if m.group(1) not in ops:
                        ops.append(m.group(1))
                    data.setdefault((b, m.group(1)), []).append(float(m.group(2)))
    def name(b: str) -> str:
        if re.match(r"^\w+=[^:]*:", b):
            var, path = b.split(":", 1)
            return path.split("/")[-1] + "+" + var.split("=", 1)[0].removeprefix("RSPLIB_WORKLOAD_").lower()
        return b.split("/")[-1]

    print(f"{policy} {pes}/{pools}, {rounds} rounds, medians (ratio to {name(bins[0])}: of the medians, and")
    print("  the median of each round's ratio, which a machine whose speed drifts between rounds moves less)")
    for op in ops:
        base = statistics.median(data[(bins[0], op)])
        cells = []
        for b in bins:
            if (b, op) in data:
                med = statistics.median(data[(b, op)])
                paired = statistics.median(x / y for x, y in zip(data[(b, op)], data[(bins[0], op)]))
                cells.append(f"{name(b)} {med / 1e6:.3f}M ({med / base:.2f}x, per round {paired:.3f}x)")
        print(f"  {op:14} " + "  ".join(cells))


if __name__ == "__main__":
    main()
