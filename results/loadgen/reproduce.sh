#!/usr/bin/env bash
# Re-measures every figure of results/loadgen/README.md (about 9 minutes on 2 cores).
# Servers run pinned to core 1, loadgen to core 0; needs redis-server on the PATH.
# Run from anywhere; results land in results/loadgen/.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p rserpool -p loadgen
L=${CARGO_TARGET_DIR:-target}/release/loadgen
$L compare -q --rounds 5                                   # resolution: registrar vs Redis vs echo, depth 1 and 16
$L compare -q --workload churn --targets registrar,echo    # registration churn vs echo of the same sizes
$L sweep -q --target registrar --spawn --duration 3        # latency vs offered load (max at depth 16)
$L sweep -q --target echo --spawn --duration 3
$L sweep -q --target registrar --spawn --duration 3 --max-depth 1 --out results/loadgen/depth1
$L sweep -q --target echo --spawn --duration 3 --max-depth 1 --out results/loadgen/depth1
