#!/usr/bin/env bash
# The fill alone (RSPLIB_WORKLOAD_FILL_ONLY) of two builds of benches/rsplib_workload.rs,
# alternated on one core (A then B, then B then A, ...), and the ratio B/A of each round: the
# median of those ratios is what to read on a machine whose speed swings between rounds.
#
#   results/handlespace/fill_pairs.sh ROUNDS PES POOLS POLICY BENCH_A BENCH_B
#
# A bench given as `ENV=value:/path/to/bench` runs with that variable set (e.g.
# RSPLIB_WORKLOAD_RESERVE=1:/tmp/ours to compare a build with itself reserving the index).
set -euo pipefail
rounds=$1 pes=$2 pools=$3 policy=$4 a=$5 b=$6
core=${CORE:-1}
run() {
    local spec=$1 env=()
    if [[ $spec == *=*:* ]]; then env=("${spec%%:*}"); spec=${spec#*:}; fi
    env "${env[@]}" RSPLIB_WORKLOAD_FILL_ONLY=1 taskset -c "$core" "$spec" "$pes" "$pools" "$policy" 0 3 2>/dev/null |
        awk '/register/ {print $5}'
}
for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then x=$(run "$a"); y=$(run "$b"); else y=$(run "$b"); x=$(run "$a"); fi
    echo "$x $y"
done | python3 -c '
import sys, statistics as st
rows = [tuple(map(float, l.split())) for l in sys.stdin]
ratios = [y / x for x, y in rows]
print("A median %.2f M/s, B median %.2f M/s, B/A per round: median %.3f (%.3f-%.3f, %d rounds)" % (
    st.median(x for x, _ in rows) / 1e6, st.median(y for _, y in rows) / 1e6,
    st.median(ratios), min(ratios), max(ratios), len(rows)))'
