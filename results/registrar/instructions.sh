#!/usr/bin/env bash
# Instructions per operation of the registrar's own work in process (benches/registrar.rs in
# count mode under callgrind): a Handle Resolution, each of 16 pipelined ones, a
# re-registration. Deterministic for a given binary, unlike time on this shared machine; so
# two builds compare exactly. Needs valgrind.
#
#   results/registrar/instructions.sh [BENCH_BINARY...]   (default: this tree's)
set -euo pipefail
cd "$(dirname "$0")/../.."
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
    cargo bench --bench registrar --no-run -q 2>/dev/null
    bins=("$(ls -t target/release/deps/registrar-* | grep -v '\.d$' | head -1)")
fi
count() { # binary op n -> instructions
    local out; out=$(mktemp)
    REGISTRAR_OP=$2 REGISTRAR_COUNT=$3 valgrind --tool=callgrind --callgrind-out-file="$out" "$1" --bench >/dev/null 2>&1
    grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
    rm -f "$out"
}
echo "| binary | resolution | each of 16 pipelined | re-registration |"
echo "|---|---|---|---|"
for b in "${bins[@]}"; do
    base=$(count "$b" none 0)
    r=$(count "$b" resolve 20000); p=$(count "$b" burst 2000); g=$(count "$b" rereg 20000)
    echo "| $b | $(( (r - base) / 20000 )) | $(( (p - base) / 32000 )) | $(( (g - base) / 20000 )) |"
done
