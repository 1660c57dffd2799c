#!/usr/bin/env bash
# Instructions and simulated cache misses per operation, ours against rsplib, under callgrind:
# deterministic counts where wall-clock ratios on a shared machine swing by 15 % between rounds.
#
#   RSPLIB_BENCH=<anchor bench> OURS=<rsplib_workload bench> results/handlespace/callgrind.sh \
#       [PES] [POOLS] [POLICY] [OPERATION]
#
# OPERATION is deregister (default) or register; only calls of that operation are counted
# (callgrind's --toggle-collect), with a 2 MiB last-level cache (one core's L2 here: a
# handlespace of 100,000 PEs or more does not fit it). Prints per operation: instructions (Ir),
# first-level data misses (D1mr/D1mw) and last-level data misses (DLmr/DLmw). Needs valgrind
# (apt-get install valgrind). About a minute for 1,000,000 PEs.
set -euo pipefail
pes=${1:-100000} pools=${2:-1} policy=${3:-WeightedRandom} op=${4:-deregister}
: "${RSPLIB_BENCH:?path of the rsplib handlespace bench}" "${OURS:?path of our rsplib_workload bench}"
case $op in
deregister) ours_fn='*Handlespace::deregister' rsplib_fn='poolHandlespaceManagementDeregisterPoolElement_SimpleRedBlackTree' calls=$pes ;;
# Both the fill and the re-registration of every PE.
# `register` is inlined into the bench: its two halves (deregistration calls neither).
register) ours_fn='*Handlespace::locate *Handlespace::register_at' rsplib_fn='poolHandlespaceManagementRegisterPoolElement_SimpleRedBlackTree' calls=$((2 * pes)) ;;
*) echo "operation: deregister or register" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for who in rsplib ours; do
    bin=$OURS fn=$ours_fn
    [ "$who" = rsplib ] && bin=$RSPLIB_BENCH fn=$rsplib_fn
    read -ra fns <<< "$fn"
    toggles=()
    for f in "${fns[@]}"; do toggles+=("--toggle-collect=$f"); done
    valgrind --tool=callgrind --cache-sim=yes --LL=2097152,16,64 "${toggles[@]}" \
        --callgrind-out-file="$tmp/$who.out" "$bin" "$pes" "$pools" "$policy" 1000 3 >/dev/null 2>&1
    # The totals line: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
    callgrind_annotate "$tmp/$who.out" | awk -v who="$who" -v n="$calls" '/PROGRAM TOTALS/ {
        gsub(/\([^)]*\)/, ""); gsub(/,/, "");
        printf "%-7s per %s: Ir %.0f  D1mr %.2f  D1mw %.2f  DLmr %.2f  DLmw %.2f\n", who, op, $1/n, $5/n, $6/n, $8/n, $9/n }' op="$op"
done
echo "($pes PEs in $pools pools, $policy; 2 MiB last level)"
