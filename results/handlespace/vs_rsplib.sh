#!/usr/bin/env bash
# rsplib's handlespace bench and ours (benches/rsplib_workload.rs, the same workload and output)
# side by side in one run: for each layout and policy, PAIRS rounds alternating rsplib, ours
# (and, with BEFORE=<binary>, an earlier build of ours), each pinned to the same core; then the
# median of each operation and the ratios ours/rsplib (and ours/before).
#
#   results/handlespace/vs_rsplib.sh                 # everything (about 15-25 minutes)
#   POLICIES="RoundRobin LeastUsed" LAYOUTS="100000:1:1000000" PAIRS=3 results/handlespace/vs_rsplib.sh
#
# Env: RSPLIB_SRC (rsplib's src/ folder; default: exported from the fetch tool's mirror of
# github:dreibh/rsplib), RSPLIB_BENCH (a built anchor bench, skips the build), OURS (our bench
# binary, default: built here), BEFORE (optional second build of ours), CORE (default 1),
# OUT (markdown file, default results/handlespace/vs-rsplib-<UTC stamp>.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
core=${CORE:-1}
pairs=${PAIRS:-3}
policies=${POLICIES:-"RoundRobin WeightedRoundRobin Random WeightedRandom Priority LeastUsed LeastUsedDegradation PriorityLeastUsed RandomizedLeastUsed"}
# PES:POOLS:RESOLUTIONS
layouts=${LAYOUTS:-"100000:1:1000000 1000000:1:2000000 1000000:100000:2000000"}
items=3
stamp=$(date -u +%Y%m%d-%H%M%S)
out=${OUT:-$here/vs-rsplib-$stamp.md}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rsplib=${RSPLIB_BENCH:-}
if [ -z "$rsplib" ]; then
    src=${RSPLIB_SRC:-}
    if [ -z "$src" ]; then
        mirror=$(ls -d /work/.mirror/dreibh+rsplib/repo 2>/dev/null || true)
        [ -n "$mirror" ] || { echo "set RSPLIB_SRC to rsplib's src/ (fetch github:dreibh/rsplib)" >&2; exit 1; }
        git --git-dir="$mirror" archive HEAD src | tar -x -C "$work"
        src=$work/src
    fi
    anchor=$root/../shared/anchors/rsplib-hsbench
    [ -d "$anchor" ] || anchor=/work/shared/anchors/rsplib-hsbench
    cp -r "$anchor" "$work/hsbench"
    "$work/hsbench/build.sh" "$src" >/dev/null
    rsplib=$work/hsbench/bench
fi
ours=${OURS:-}
if [ -z "$ours" ]; then
    ours=$(cargo bench --bench rsplib_workload --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "rsplib_workload" and m.get("executable"):
        print(m["executable"])')
fi
before=${BEFORE:-}

{
    echo "# rsplib's handlespace vs ours, side by side"
    echo
    echo "Run $stamp UTC on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r),"
    echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?'), pinned to core $core, $pairs alternating rounds per case."
    echo "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
} > "$work/header"

for layout in $layouts; do
    IFS=: read -r pes pools res <<< "$layout"
    for p in $policies; do
        for r in $(seq 1 "$pairs"); do
            taskset -c "$core" "$rsplib" "$pes" "$pools" "$p" "$res" "$items" | sed "s/^/rsplib $r /" >> "$work/raw"
            taskset -c "$core" "$ours" "$pes" "$pools" "$p" "$res" "$items" | sed "s/^/ours $r /" >> "$work/raw"
            if [ -n "$before" ]; then
                taskset -c "$core" "$before" "$pes" "$pools" "$p" "$res" "$items" | sed "s/^/before $r /" >> "$work/raw"
            fi
        done
        echo "done $pes PEs / $pools pools / $p ($(cut -d' ' -f1 /proc/loadavg))" >&2
    done
done
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)." >> "$work/header"

python3 - "$work/raw" "$work/header" <<'EOF' > "$out"
import re, statistics, sys
raw, header = sys.argv[1], sys.argv[2]
pat = re.compile(r"^(\S+) (\d+) (\S+)\s+N=(\d+)\s+pools=(\d+)\s+(register|re-register|handle-res\(\d+\)|table-export|deregister)\s+([\d.]+)")
data = {}
for line in open(raw):
    m = pat.match(line)
    if not m:
        continue
    who, _, pol, n, pools, op, v = m.groups()
    data.setdefault((int(n), int(pools), pol, op), {}).setdefault(who, []).append(float(v))
print(open(header).read())
have_before = any("before" in d for d in data.values())
ops = ["register", "re-register", "handle-res(3)", "table-export", "deregister"]
cols = "| PEs | pools | policy | operation | rsplib (ops/s) | ours (ops/s) | ours/rsplib | ours/rsplib per round |"
if have_before:
    cols += " before (ops/s) | ours/before |"
print(cols)
print("|" + "---|" * (cols.count("|") - 1))
def fmt(x):
    return f"{x/1e6:.2f}M" if x >= 1e6 else f"{x/1e3:.0f}k"
keys = sorted({(k[0], k[1], k[2]) for k in data}, key=lambda k: (k[0], k[1]))
for (n, pools, pol) in keys:
    for op in ops:
        d = data.get((n, pools, pol, op))
        if not d or "rsplib" not in d or "ours" not in d:
            continue
        a, b = statistics.median(d["rsplib"]), statistics.median(d["ours"])
        per = " ".join(f"{y/x:.1f}" for x, y in zip(d["rsplib"], d["ours"]))
        row = f"| {n:,} | {pools:,} | {pol} | {op} | {fmt(a)} | {fmt(b)} | **{b/a:.1f}x** | {per} |"
        if have_before:
            c = statistics.median(d["before"])
            row += f" {fmt(c)} | {b/c:.2f}x |"
        print(row)
print()
print("Raw lines (who, round, then the bench's own line):")
print()
print("```")
print(open(raw).read().rstrip())
print("```")
EOF
cat "$out" | sed -n '1,/^Raw lines/p'
echo "wrote $out"
