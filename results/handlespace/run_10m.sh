#!/usr/bin/env bash
# 10,000,000 PEs in one handlespace (one registrar shard): rsplib's bench workload
# (benches/rsplib_workload.rs) at N = 10M, pinned to one core, under /usr/bin/time for the peak
# RSS. The bench prints the RSS right after the fill and the fill time on stderr, then the rate
# of each operation (fill, re-register with a random load, 2M resolutions of 3, owner walk,
# deregister).
#
#   results/handlespace/run_10m.sh            # OURS=<bench binary> to skip the build
set -euo pipefail
cd "$(dirname "$0")/../.."
core=${CORE:-1}
ours=${OURS:-}
if [ -z "$ours" ]; then
    ours=$(cargo bench --bench rsplib_workload --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "rsplib_workload" and m.get("executable"):
        print(m["executable"])')
fi
echo "# $(date -u +%FT%TZ), git $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for case in "10000000 1 RoundRobin" "10000000 1 LeastUsed" "10000000 1000000 RoundRobin"; do
    # shellcheck disable=SC2086
    /usr/bin/time -f "peak RSS %M kB, wall %e s, user %U s, sys %S s" taskset -c "$core" "$ours" $case 2000000 3 2>&1
    echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
done
