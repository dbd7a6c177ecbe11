#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each for SECONDS (default
# 60), printing the executions per target. Uses the stable toolchain:
# SanitizerCoverage instrumentation through stable -C flags, libFuzzer from
# the libfuzzer-sys crate, no AddressSanitizer (the code under test forbids
# `unsafe`; panics, overflows and debug assertions abort the run). So neither
# nightly nor cargo-fuzz is needed; `cargo +nightly fuzz run TARGET` works too.
#   scripts/fuzz.sh 10     # the CI smoke run
#   scripts/fuzz.sh 600    # the longer run before a release
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
target_dir=${FUZZ_TARGET_DIR:-$root/fuzz/target}
triple=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the instrumentation away from build scripts and proc macros.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks" \
  cargo build --manifest-path "$root/fuzz/Cargo.toml" --release --locked --bins \
  --target "$triple" --target-dir "$target_dir"
total=0
for t in blob_decode share_parse policy_parse config_parse requests envelope_open; do
  corpus="$root/fuzz/corpus/$t"
  artifacts="$root/fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  if ! out=$("$target_dir/$triple/release/$t" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" 2>&1); then
    echo "$out" | tail -40
    echo "FUZZ FAILURE in $t (input saved under $artifacts)"
    exit 1
  fi
  execs=$(echo "$out" | sed -n 's/^stat::number_of_executed_units: *//p' | tail -1)
  total=$((total + execs))
  echo "fuzz $t: $execs executions in ${secs}s, no crash"
done
echo "fuzz: $total executions over 6 targets, no crash"
