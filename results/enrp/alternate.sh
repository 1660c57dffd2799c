#!/usr/bin/env bash
# Resolution throughput at registrar B with and without 50,000 Handle Updates/s, the updates
# switched on and off window by window within one client run (`loadgen peer-updates --feed
# --alternate-ms`), so that both sides of each ratio share the run's connections and operating
# mode. Three runs: r1 (20 pairs x 3 rounds) and r2 (40 x 3) with the stand-in peer on the
# client's core, r3 (40 x 3) with it on B's core (what the feed's writes cost, including the
# loopback TCP receive path, charged to B). Raw tables into raw/alternate/.
#   results/enrp/alternate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. results/enrp/lib.sh
out=results/enrp/raw/alternate
mkdir -p "$out"
build_release
run() {
    local name=$1; shift
    d=$(mktemp -d)
    target/release/loadgen peer-updates --feed --feed-window-us 200 --alternate-ms 1000 --rounds 3 -c 16 -d 16 \
        --warmup 1 --out "$d" "$@" > /dev/null 2>&1
    cp "$d"/*.md "$out/$name.md"
    cp "$d"/*.json "$out/$name.json"
    rm -rf "$d"
    echo "$name: $(grep -A2 '^| pairs' "$out/$name.md" | tail -1)"
}
run r1 --pairs 20
run r2 --pairs 40
run r3 --pairs 40 --feed-core 1
