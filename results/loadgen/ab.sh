#!/usr/bin/env bash
# Two registrar builds alternated in one run (A B A B ...): `loadgen compare` of each, one round
# at a time, at depths 1 and 16, resolution workload; then the medians and their ratios
# (throughput, and capacity = answers/s per core of server CPU).
#
#   results/loadgen/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [OUT]
#
# Build the old one from a worktree, e.g.:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p rserpool)
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 new=$2 rounds=${3:-5} out=${4:-results/loadgen}
cargo build --release -q -p loadgen
L=${CARGO_TARGET_DIR:-target}/release/loadgen
tmp=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        $L compare -q --rounds 1 --targets registrar --registrar-bin "$bin" --out "$tmp/$r-$which" >/dev/null
    done
done
stamp=$(date -u +%Y%m%d-%H%M%S)
python3 - "$tmp" "$rounds" "$old" "$new" > "$out/ab-$stamp.md" <<'EOF'
import glob, json, statistics, sys, subprocess
tmp, rounds, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = {}
machine = None
for r in range(1, rounds + 1):
    for which in ("old", "new"):
        d = json.load(open(glob.glob(f"{tmp}/{r}-{which}/*.json")[0]))
        machine = d["machine"]
        for s in d["samples"]:
            cap = s["throughput"] / s["server_cpu"] if s.get("server_cpu") else None
            rows.setdefault((s["depth"], which), []).append((r, s["throughput"], s["server_cpu"], cap, s["p50_us"], s["p99_us"]))
print(f"# Registrar A/B: {old} (old) vs {new} (new), {rounds} alternating rounds\n")
print(f"Machine: {json.dumps(machine)}\n")
print("| round | depth | build | answers/s | server CPU | capacity (answers/s per server core) | p50 us | p99 us |")
print("|---|---|---|---|---|---|---|---|")
for (depth, which), rs in sorted(rows.items()):
    for (r, t, cpu, cap, p50, p99) in rs:
        print(f"| {r} | {depth} | {which} | {t:.0f} | {cpu:.2f} | {cap:.0f} | {p50:.0f} | {p99:.0f} |")
print("\n| depth | old median answers/s | new median answers/s | new/old | old median capacity | new median capacity | new/old capacity | new/old paired (median of per-round ratios) |")
print("|---|---|---|---|---|---|---|---|")
for depth in sorted({d for d, _ in rows}):
    o, n = rows[(depth, "old")], rows[(depth, "new")]
    mo, mn = statistics.median(x[1] for x in o), statistics.median(x[1] for x in n)
    co, cn = statistics.median(x[3] for x in o), statistics.median(x[3] for x in n)
    paired = statistics.median(b[1] / a[1] for a, b in zip(o, n))
    print(f"| {depth} | {mo:.0f} | {mn:.0f} | {mn/mo:.3f} | {co:.0f} | {cn:.0f} | {cn/co:.3f} | {paired:.3f} |")
EOF
rm -rf "$tmp"
cat "$out/ab-$stamp.md"
echo "wrote $out/ab-$stamp.md"
