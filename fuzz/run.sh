#!/bin/bash
# Build the fuzz targets with libFuzzer on stable Rust and run each for a
# number of executions (default 10 million). What cargo-fuzz does, without
# installing cargo-fuzz: RUSTC_BOOTSTRAP=1 for the SanitizerCoverage flags,
# libfuzzer-sys from crates.io for the engine. Not part of `make test`.
#
#   fuzz/run.sh [RUNS] [TARGET...]      (targets: frame_scan frame_stream
#                                        broker_url config_apply)
#
# Corpora grow in fuzz/corpus/TARGET (not committed); a crash input is
# written to fuzz/artifacts/TARGET/ and should be copied to
# fuzz/regressions/TARGET-NAME, where fuzz/run.sh replays it first.
set -e
cd "$(dirname "$0")"
RUNS=${1:-10000000}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frame_scan frame_stream broker_url config_apply)

export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target keeps the flags off build scripts and proc macros.
cargo build --release --bins --target x86_64-unknown-linux-gnu

for t in "${TARGETS[@]}"; do
    bin=target/x86_64-unknown-linux-gnu/release/$t
    mkdir -p "corpus/$t" "artifacts/$t"
    for r in regressions/"$t"-*; do
        [ -e "$r" ] && "$bin" "$r"
    done
    echo "=== $t: $RUNS runs"
    # -max_len 4096 keeps inputs at the size of a few frames or lines.
    "$bin" "corpus/$t" -runs="$RUNS" -max_len=4096 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::|Done|==|SUMMARY|.*panicked)" || true
    "$bin" -runs=0 "corpus/$t" 2>&1 | grep -E "INITED|DONE" | tail -1 || true
done
