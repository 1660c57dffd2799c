#!/usr/bin/env bash
# Resolution throughput at registrar B with and without 50,000 Handle Updates/s from a peer,
# the peer being `loadgen peer-updates --feed` (a stand-in that writes pre-encoded updates at
# almost no CPU, so that on a 2-core machine the resolution client keeps its core while they
# run). One round per run, ROUNDS rounds (default 3), feed windows alternating: WINDOWS
# (default "200 500") microseconds between writes, as a registrar gathering its updates for
# that long writes them; 1 us stands for a sender that writes every few updates (the timer
# slack makes it ~55 us). Raw tables into raw/feed/.
#   results/enrp/feed.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
WINDOWS=${WINDOWS:-"200 500"}
. results/enrp/lib.sh
out=results/enrp/raw/feed
mkdir -p "$out"
build_release
for r in $(seq 1 "$ROUNDS"); do
    for w in $WINDOWS; do
        d=$(mktemp -d)
        target/release/loadgen peer-updates --feed --feed-window-us "$w" --rounds 1 -c 16 -d 16 --duration 4 \
            --out "$d" > /dev/null 2>&1
        cp "$d"/*.md "$out/feed-$w-r$r.md"
        cp "$d"/*.json "$out/feed-$w-r$r.json"
        rm -rf "$d"
        echo "window ${w}us r$r: $(grep -E '^\| 1 \|' "$out/feed-$w-r$r.md" | tr '\n' ' ')"
    done
done
