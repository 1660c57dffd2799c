#!/usr/bin/env bash
# Registrar capacity per server core at depth 16 against the size of its handlespace: the
# resolution workload over P pools of 10 PEs for each P given, and the bare echo, alternated in
# every round. Says how much of the gap to the echo a smaller working set (a denser layout)
# could close: with 10 pools every PE stays in the caches.
#
#   results/loadgen/working-set.sh [ROUNDS] [POOLS...]     # default: 3 rounds, 10 1000 10000
#
# Needs target/release/loadgen and target/release/rserpool (cargo build --release -p rserpool
# -p loadgen). Prints per round and the medians; about 7 s per case and round.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
shift || true
pools=("$@")
[ ${#pools[@]} -gt 0 ] || pools=(10 1000 10000)
L=${LOADGEN:-target/release/loadgen}
R=${RSERPOOL:-target/release/rserpool}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
    for p in "${pools[@]}" echo; do
        if [ "$p" = echo ]; then
            $L compare -q --rounds 1 --depths 16 --targets echo --out "$tmp/$r-echo" >/dev/null 2>>"$tmp/log"
        else
            $L compare -q --rounds 1 --depths 16 --targets registrar --registrar-bin "$R" --pools "$p" --out "$tmp/$r-$p" >/dev/null 2>>"$tmp/log"
        fi
    done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$tmp" <<'PY'
import glob, json, statistics, sys
rows = {}
for f in glob.glob(f"{sys.argv[1]}/*-*/*.json"):
    case = f.split("/")[-2].split("-", 1)[1]
    for s in json.load(open(f))["samples"]:
        rows.setdefault(case, []).append((s["throughput"], s["server_cpu"], s["throughput"] / s["server_cpu"]))
echo = statistics.median(c for _, _, c in rows["echo"])
print("| server | PEs | capacity per round (answers/s per server core) | server CPU per round | median | vs echo |")
print("|---|---|---|---|---|---|")
for case in sorted(rows, key=lambda c: (c == "echo", int(c) if c.isdigit() else 0)):
    caps = [c for _, _, c in rows[case]]
    med = statistics.median(caps)
    pes = "-" if case == "echo" else f"{int(case) * 10:,}"
    name = "bare echo" if case == "echo" else f"registrar, {case} pools x 10"
    print(f"| {name} | {pes} | {' '.join(f'{c/1e6:.2f}M' for c in caps)} | {' '.join(f'{u:.2f}' for _, u, _ in rows[case])} | {med/1e6:.3f}M | {med/echo:.2f}x |")
PY
