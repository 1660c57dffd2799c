#!/usr/bin/env bash
# Resolution throughput and latency of the registrar per engine (io_uring, epoll) and per tuning
# profile, loadgen pinned to core 0: 64 connections, 1,000 pools of 10 PEs, depth 1 and 16,
# 1 s warm-up + 4 s measured each, three rounds with engines and profiles alternating
# (../../shared/PERF.md); the table gives medians. Writes
# results/registrar/<engine>-<profile>-d<depth>-r<round>.json and prints the markdown table for
# results/registrar/README.md. About 5 minutes.
#
# Profiles on this 2-core machine: 2core-split (one shard on core 1: the registrar has its own
# core), single-core (one shard on core 0, which it shares with loadgen), default (two shards,
# cores 0 and 1: one shares its core with loadgen; pools spread over both shards).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p rserpool -p loadgen
T=${CARGO_TARGET_DIR:-target}/release
OUT=results/registrar
ROUNDS=${ROUNDS:-3}
port=$((20000 + RANDOM % 20000))
for round in $(seq "$ROUNDS"); do
    for profile in 2core-split single-core default; do
        for engine in uring epoll; do
            port=$((port + 1))
            $T/rserpool registrar --asap 127.0.0.1:$port --enrp 127.0.0.1:$((port + 20000)) --engine $engine \
                --profile tuning/$profile.toml --log warn &
            pid=$!
            trap 'kill $pid 2>/dev/null' EXIT
            for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
            # Each run registers its pools again: registrations belong to loadgen's connections.
            for depth in 1 16; do
                $T/loadgen run -q --addr 127.0.0.1:$port --cores 0 -c 64 -d $depth --warmup 1 --duration 4 \
                    --json $OUT/$engine-$profile-d$depth-r$round.json > /dev/null
            done
            kill -INT $pid
            wait $pid || true
        done
    done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| engine | profile | depth | answers/s (median) | runs | p50 us | p99 us | p99.9 us | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for profile in ("2core-split", "single-core", "default"):
    for engine in ("uring", "epoll"):
        for depth in (1, 16):
            rs = [json.load(open(os.path.join(out, f"{engine}-{profile}-d{depth}-r{r}.json")))["result"]
                  for r in range(1, rounds + 1)]
            rs.sort(key=lambda r: r["throughput"])
            m = rs[len(rs) // 2]
            lat = m["latency"]
            errors = sum(r["errors"]["total"] for r in rs)
            runs = ", ".join(f"{r['throughput'] / 1000:.0f}k" for r in rs)
            print(f"| {engine} | {profile} | {depth} | {m['throughput']:.0f} | {runs} | {lat['p50_us']:.0f} "
                  f"| {lat['p99_us']:.0f} | {lat['p999_us']:.0f} | {errors} |")
PY
