#!/usr/bin/env bash
# Registrar capacity against the bare echo, two registrar builds alternated in one run:
# each round runs `loadgen compare --targets registrar,echo` with the old build, then with the
# new one (so: old, echo, new, echo, ...), at the given depths, resolution workload; then the
# medians of capacity (answers/s per core of server CPU) and their ratios to the echo's capacity
# measured in the same rounds.
#
#   results/loadgen/ab-echo.sh OLD_BINARY NEW_BINARY [ROUNDS] [DEPTHS] [OUT_DIR]
#
# Needs target/release/loadgen (cargo build --release -p loadgen).
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 new=$2 rounds=${3:-3} depths=${4:-16} out=${5:-results/loadgen}
L=${LOADGEN:-${CARGO_TARGET_DIR:-target}/release/loadgen}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$rounds"); do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        $L compare -q --rounds 1 --depths "$depths" --targets registrar,echo --registrar-bin "$bin" --out "$tmp/$r-$which" >/dev/null
    done
    echo "round $r done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)
stamp=$(date -u +%Y%m%d-%H%M%S)
python3 - "$tmp" "$rounds" "$old" "$new" "$load0" "$load1" > "$out/ab-echo-$stamp.md" <<'PY'
import glob, json, statistics, sys
tmp, rounds, old, new, load0, load1 = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
rows = {}
machine = None
for r in range(1, rounds + 1):
    for which in ("old", "new"):
        d = json.load(open(glob.glob(f"{tmp}/{r}-{which}/*.json")[0]))
        machine = d["machine"]
        for s in d["samples"]:
            t = s["target"] if s["target"] != "registrar" else which
            tag = t if t != "echo" else f"echo ({which} pass)"
            cap = s["throughput"] / s["server_cpu"] if s.get("server_cpu") else float("nan")
            rows.setdefault(s["depth"], []).append((r, tag, s["throughput"], s.get("server_cpu") or 0, cap))
print(f"# Registrar capacity vs the bare echo: {old} (old) and {new} (new), {rounds} alternating rounds\n")
print(f"Machine: {json.dumps(machine)}. Load average at the start {load0}, at the end {load1}.\n")
print("| round | depth | server | answers/s | server CPU | capacity (answers/s per server core) |")
print("|---|---|---|---|---|---|")
for depth, rs in sorted(rows.items()):
    for (r, tag, t, cpu, cap) in rs:
        print(f"| {r} | {depth} | {tag} | {t:.0f} | {cpu:.2f} | {cap:.0f} |")
print("\n| depth | old capacity | new capacity | echo capacity | old/echo | new/echo | new/old | new/echo per round |")
print("|---|---|---|---|---|---|---|---|")
for depth, rs in sorted(rows.items()):
    cap = lambda tag: [x[4] for x in rs if x[1] == tag]
    o, n = cap("old"), cap("new")
    e = [x[4] for x in rs if x[1].startswith("echo")]
    mo, mn, me = statistics.median(o), statistics.median(n), statistics.median(e)
    # per round: the new build against the echo run right after it
    per = [x for x in zip(n, cap("echo (new pass)"))]
    print(f"| {depth} | {mo:.0f} | {mn:.0f} | {me:.0f} | {mo/me:.3f} | {mn/me:.3f} | {mn/mo:.3f} | {' '.join(f'{a/b:.2f}' for a, b in per)} |")
PY
cat "$out/ab-echo-$stamp.md"
echo "wrote $out/ab-echo-$stamp.md"
