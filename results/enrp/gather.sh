#!/usr/bin/env bash
# Handle Updates gathered at the sender for a window of microseconds (`[timers]
# update_coalesce_us`), swept over 0 (written at once), 200, 500 and 1000 us, ROUNDS rounds
# (default 3), the windows alternating within each round (raw/gather/):
#  - `loadgen peer-updates --rounds 0`: A's 50,000 updates/s alone, B's CPU per update received;
#  - `loadgen propagation` at 50,000 updates/s: when each change is visible at B.
#   results/enrp/gather.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
. results/enrp/lib.sh
out=results/enrp/raw/gather
mkdir -p "$out"
build_release
L=target/release/loadgen
for w in 0 200 500 1000; do
    printf '[timers]\nupdate_coalesce_us = %s\n' "$w" > "$out/timers-$w.toml"
    # propagation's generated config holds [limits]; append only the timers.
    printf '[limits]\nmax_pes_per_connection = 528\n\n[timers]\nupdate_coalesce_us = %s\n' "$w" > "$out/propagation-$w.toml"
done
for r in $(seq 1 "$ROUNDS"); do
    for w in 0 200 500 1000; do
        $L peer-updates --rounds 0 --registrar-config "$out/timers-$w.toml" --out "$out/alone-$w-r$r" > "$out/alone-$w-r$r.txt" 2>&1
        echo "alone ${w}us r$r: $(grep -o "B received.*" "$out/alone-$w-r$r.txt" | head -1)"
        $L propagation --spawn --rate 50000 --duration 5 --registrar-config "$out/propagation-$w.toml" \
            --json "$out/propagation-$w-r$r.json" > "$out/propagation-$w-r$r.txt" 2>/dev/null
        echo "propagation ${w}us r$r: $(grep 'visible at B (upper' "$out/propagation-$w-r$r.txt")"
    done
done
