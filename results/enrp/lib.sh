# Sourced by the results/enrp scripts (from the repository root): pauses this machine's
# background jobs for the run where /work/quiet.sh exists (resumed on exit), and builds the
# release registrar (plus any further `cargo build` arguments, e.g. `--example enrp_perf`) and
# loadgen.
if [ -x /work/quiet.sh ]; then
    /work/quiet.sh stop
    trap '/work/quiet.sh cont' EXIT
fi
build_release() {
    cargo build --release -q --bin rserpool -p rserpool "$@"
    cargo build --release -q -p loadgen
}
