#!/usr/bin/env bash
# Kept for the record of its 08:51 run: it needs a build from before 86dbcb3, when the window
# was `[timers] update_coalesce` in milliseconds; results/enrp/gather.sh replaces it.
# A/B of this session's ENRP receive changes and of the update coalescing window (raw/coalesce/):
#  - `loadgen peer-updates` (B's CPU per received update; resolution throughput at B with and
#    without 50,000 updates/s from A), one round each, x3, alternating: the build before the
#    changes (OLD_BIN), this build (updates written at once, the default), this build with
#    `[timers] update_coalesce = 1`;
#  - `loadgen propagation` at 50,000 updates/s, this build at once and with 1 ms, x3 alternating.
#   OLD_BIN=/path/to/old/rserpool results/enrp/coalesce.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/enrp/raw/coalesce
L=target/release/loadgen
NEW=target/release/rserpool
for r in 1 2 3; do
    for v in old at-once 1ms; do
        case $v in
            old) args=(--registrar-bin "$OLD_BIN") ;;
            at-once) args=(--registrar-bin "$NEW") ;;
            1ms) args=(--registrar-bin "$NEW" --registrar-config "$out/timers-1ms.toml") ;;
        esac
        mkdir -p "$out/peer-updates-$v-r$r"
        $L peer-updates --rounds 1 "${args[@]}" --out "$out/peer-updates-$v-r$r" > /dev/null 2>&1
        echo "peer-updates $v r$r: $(grep -h 'updates alone' "$out/peer-updates-$v-r$r"/*.md | grep -o 'used.*')"
    done
done
for r in 1 2 3; do
    $L propagation --spawn --rate 50000 --duration 5 --json "$out/propagation-at-once-r$r.json" > "$out/propagation-at-once-r$r.txt" 2>/dev/null
    $L propagation --spawn --rate 50000 --duration 5 --registrar-config "$out/propagation-1ms.toml" \
        --json "$out/propagation-1ms-r$r.json" > "$out/propagation-1ms-r$r.txt" 2>/dev/null
    for v in at-once 1ms; do echo "propagation $v r$r: $(grep 'visible at B (upper' "$out/propagation-$v-r$r.txt")"; done
done
