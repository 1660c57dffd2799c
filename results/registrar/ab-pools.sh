#!/bin/bash
# results/registrar/ab-pools.sh ROUNDS POOLS OLD_BIN NEW_BIN: two registrar builds alternated
# (old, new, old, ...), `loadgen compare` of each alone at depth 16 over POOLS pools of 10, one
# round at a time; prints "round build answers/s server-CPU capacity" (capacity = answers/s per
# core of server CPU). WORKLOAD=churn measures registration churn instead of resolution.
# Needs target/release/loadgen.
cd "$(dirname "$0")/../.."
rounds=$1 pools=$2 old=$3 new=$4
for r in $(seq 1 $rounds); do
  for w in old new; do
    bin=$old; [ $w = new ] && bin=$new
    d=$(mktemp -d)
    target/release/loadgen compare -q --rounds 1 --depths 16 --targets registrar --registrar-bin $bin --pools $pools --workload ${WORKLOAD:-resolve} --out $d >/dev/null 2>&1
    python3 -c "
import json,glob
d=json.load(open(glob.glob('$d/*.json')[0]))
s=d['samples'][0]; print('$r $w', round(s['throughput']), round(s['server_cpu'],2), round(s['throughput']/s['server_cpu']))"
    rm -rf "$d"
  done
done
