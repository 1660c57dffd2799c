#!/usr/bin/env bash
# Soak: registrar A (2 shards) peered with registrar B over ENRP on loopback; loadgen drives
# A with a mix of resolutions and registration churn at a fixed open-loop rate for DURATION
# seconds (default 600), while a second client opens a connection, resolves and closes ten
# times a second (connection churn). Every 5 s the RSS and open file descriptors of A and B are
# sampled into raw/soak-<date>.csv; soak_plot.py draws them (SVG) and states whether each stayed
# within the bound (after the first minute, RSS within +-10 % and fds within +-8 of their level
# at one minute).
#
#   results/soak/soak.sh [DURATION] [RATE]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-600}
rate=${2:-10000}
out=results/soak/raw
mkdir -p "$out"
stamp=$(date -u +%Y%m%d-%H%M)
csv=$out/soak-$stamp.csv
cargo build --release -q --bin rserpool -p rserpool
cargo build --release -q -p loadgen
R=target/release/rserpool
L=target/release/loadgen
dir=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pa=$(port); pb=$(port); ea=$(port); eb=$(port)
"$R" registrar --cores 2 --asap 127.0.0.1:$pa --enrp 127.0.0.1:$ea --id aaaa0001 --log warn 2> "$dir/a.log" &
A=$!
"$R" registrar --cores 1 --asap 127.0.0.1:$pb --enrp 127.0.0.1:$eb --id bbbb0002 --peer 127.0.0.1:$ea --log warn 2> "$dir/b.log" &
B=$!
cleanup() { kill "$A" "$B" 2>/dev/null || true; kill "$CHURN" 2>/dev/null || true; }
trap cleanup EXIT
sleep 1

sample() { # seconds since start, RSS kB and fds of A and B
    local t=$1 line="$1"
    for p in $A $B; do
        line="$line,$(awk '/^VmRSS/ {print $2}' /proc/$p/status),$(ls /proc/$p/fd | wc -l)"
    done
    echo "$line" >> "$csv"
}
echo "seconds,a_rss_kb,a_fds,b_rss_kb,b_fds" > "$csv"

# Connection churn: a fresh connection, one resolution, close; ten a second.
( while :; do "$R" resolve --registrar 127.0.0.1:$pa pool-00001 > /dev/null 2>&1 || true; sleep 0.1; done ) &
CHURN=$!

"$L" run --addr 127.0.0.1:$pa --workload mix --resolve-share 0.5 --rate "$rate" --connections 32 --depth 4 \
    --pools 1000 --pool-size 10 --churn-slots 64 --warmup 1 --duration "$duration" --quiet \
    --json "$out/soak-$stamp-loadgen.json" > "$out/soak-$stamp-loadgen.txt" &
LG=$!
start=$SECONDS
while kill -0 $LG 2>/dev/null; do
    sample $((SECONDS - start))
    sleep 5
done
# loadgen exits non-zero when any answer was an error (a mix resolves pools the churn may
# have just emptied: those count as resolution_failed); its report says which.
wait $LG || echo "loadgen exit status $?" >> "$out/soak-$stamp-loadgen.txt"
sample $((SECONDS - start))
kill "$CHURN" 2>/dev/null || true
alive=yes
kill -0 $A && kill -0 $B || alive=no
echo "registrars alive at the end: $alive" | tee -a "$out/soak-$stamp-loadgen.txt"
grep -iE "panic|error" "$dir"/a.log "$dir"/b.log | head -20 | tee "$out/soak-$stamp-errors.txt" || true
python3 results/soak/soak_plot.py "$csv" | tee "$out/soak-$stamp-summary.txt"
