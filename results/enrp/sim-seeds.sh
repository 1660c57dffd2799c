#!/usr/bin/env bash
# The long run of the ENRP simulation (src/registrar/enrp_sim_tests.rs): SEEDS seeds (default
# 100,000) in pieces of PIECE (default 10,000), release build, one log line per piece in
# results/enrp/raw/sim-seeds.log. A failing seed stops the run and prints its replay command.
#
#   results/enrp/sim-seeds.sh [SEEDS] [PIECE] [FIRST]
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${1:-100000}; piece=${2:-10000}; first=${3:-0}
mkdir -p results/enrp/raw
log=results/enrp/raw/sim-seeds.log
# One binary for the whole run, copied so that later builds cannot change it midway.
bin=$(cargo test --release --lib --no-run --message-format=json -q | python3 -c '
import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
cp "$bin" /tmp/rserpool-bg-sim-lib
echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD), $seeds seeds from $first" >> "$log"
for ((s = first; s < first + seeds; s += piece)); do
    t0=$(date +%s)
    out=$(RSERPOOL_ENRP_SEED_START=$s RSERPOOL_ENRP_SEEDS=$piece \
        /tmp/rserpool-bg-sim-lib registrars_converge_after_crashes_partitions_and_collisions --nocapture 2>&1) || {
        echo "$out" | tail -20; echo "FAILED in seeds $s..$((s + piece))" | tee -a "$log"; exit 1; }
    echo "$(date -u +%FT%TZ) $(echo "$out" | grep 'ENRP simulation seeds') wall $(( $(date +%s) - t0 )) s" | tee -a "$log"
done
