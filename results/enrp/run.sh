#!/usr/bin/env bash
# Every figure of results/enrp/README.md, raw output into results/enrp/raw/.
#
#   results/enrp/run.sh [STEP...]        steps: sync takeover propagation throughput (default), inproc chunk split
#
# ROUNDS (default 3) rounds per figure. The session's background jobs are paused for the run
# (/work/quiet.sh stop, resumed on exit) where that script exists.
#
# OLD_BIN / OLD_EXAMPLE: the registrar binary and examples/enrp_perf built from the commit
# before the table-transfer changes (for the A/B steps `inproc` and `sync`), e.g.
#   git archive 79f9f38 | tar -x -C /tmp/enrp-base && cp examples/enrp_perf.rs /tmp/enrp-base/examples/ \
#     && (cd /tmp/enrp-base && cargo build --release --bin rserpool --example enrp_perf)
#   OLD_BIN=/tmp/enrp-base/target/release/rserpool OLD_EXAMPLE=/tmp/enrp-base/target/release/examples/enrp_perf
#
# This machine is shared: before each round the script waits (up to QUIET_WAIT seconds) until
# both cores are at least 85 % idle for a second (other sessions' builds would otherwise be in
# the figures), and logs the idle share and load it started at (raw/load.log).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
. results/enrp/lib.sh
out=results/enrp/raw
mkdir -p "$out"
build_release --example enrp_perf
E=target/release/examples/enrp_perf
L=target/release/loadgen
NEW=target/release/rserpool
OLD_BIN=${OLD_BIN:-}
OLD_EXAMPLE=${OLD_EXAMPLE:-}

idle_pct() { # idle share of both cores over one second
    local a b
    read -r _ u n s i w q sq st _ < /proc/stat; a=$((u + n + s + i + w + q + sq + st)); b=$i
    sleep 1
    read -r _ u n s i w q sq st _ < /proc/stat
    echo $(((i - b) * 100 / ((u + n + s + i + w + q + sq + st) - a + 1)))
}
wait_quiet() { # up to QUIET_WAIT seconds (default 300) for >= 85 % idle; logs what it got
    local start=$SECONDS p
    while :; do
        p=$(idle_pct)
        if [ "$p" -ge 85 ] || [ $((SECONDS - start)) -ge "${QUIET_WAIT:-300}" ]; then
            echo "# $(date -u +%FT%TZ) idle ${p}% load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.log" >&2
            return
        fi
    done
}

step_inproc() { # export and import CPU per PE, in process, old and new code alternating (both at the old chunk of 128)
    local f=$out/inproc.jsonl; : > "$f"
    for r in $(seq "$ROUNDS"); do
        if [ -n "$OLD_EXAMPLE" ]; then wait_quiet; "$OLD_EXAMPLE" inproc --rounds 1 --chunk 128 | sed 's/^{/{"build":"old",/' >> "$f"; fi
        wait_quiet; $E inproc --rounds 1 --chunk 128 | sed 's/^{/{"build":"new",/' >> "$f"
    done
}

step_sync() { # table sync to a new peer, 100k and 1M PEs, old and new binary alternating (both on core 1)
    for n in 100000 1000000; do
        local f=$out/sync-$n.jsonl; : > "$f"
        for r in $(seq "$ROUNDS"); do
            if [ -n "$OLD_BIN" ]; then wait_quiet; $E sync --pes $n --rounds 1 --bin "$OLD_BIN" | sed 's/^{/{"build":"old",/' >> "$f"; fi
            wait_quiet; $E sync --pes $n --rounds 1 --bin $NEW | sed 's/^{/{"build":"new",/' >> "$f"
        done
    done
}

step_chunk() { # the new binary with the old chunk default (128) and the new one (1024), alternating
    local f=$out/sync-chunk.jsonl; : > "$f"
    for r in $(seq "$ROUNDS"); do
        wait_quiet; $E sync --pes 1000000 --rounds 1 --chunk 128 >> "$f"
        wait_quiet; $E sync --pes 1000000 --rounds 1 >> "$f"
        wait_quiet; $E sync --pes 1000000 --rounds 1 --max-message 65535 >> "$f"
    done
}

step_split() { # A on core 0, B on core 1 (each registrar a core of its own)
    local f=$out/sync-split.jsonl; : > "$f"
    for r in $(seq "$ROUNDS"); do
        for n in 100000 1000000; do
            wait_quiet; $E sync --pes $n --rounds 1 --cores 0,1 >> "$f"
        done
    done
}

step_takeover() {
    local f=$out/takeover.jsonl; : > "$f"
    for r in $(seq "$ROUNDS"); do wait_quiet; $E takeover --pes 100000 --rounds 1 >> "$f"; done
}

step_propagation() {
    for r in $(seq "$ROUNDS"); do
        wait_quiet
        $L propagation --spawn --rate 50000 --duration 5 --plot --out "$out" --json "$out/propagation-50k-r$r.json" \
            > "$out/propagation-50k-r$r.txt"
    done
    wait_quiet
    $L propagation --spawn --rate 100000 --duration 5 --plot --out "$out" --json "$out/propagation-100k.json" \
        > "$out/propagation-100k.txt" || true
}

step_throughput() {
    wait_quiet
    $L peer-updates --rounds "$ROUNDS" --out "$out"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(sync takeover propagation throughput)
for s in "${steps[@]}"; do
    echo "## step $s" >&2
    "step_$s"
done
