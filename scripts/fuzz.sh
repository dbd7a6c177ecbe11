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
# The build shares the workspace's target directory and compiles only
# Keywarden's crates and the targets with coverage instrumentation (see
# scripts/fuzz-rustc.sh): after scripts/build-deb.sh (the package test runs
# it first in scripts/test.sh) every dependency is already built, and only
# about a dozen crates compile here.
target_dir=${FUZZ_TARGET_DIR:-$root/target}
RUSTC_WRAPPER="$root/scripts/fuzz-rustc.sh" \
  cargo build --manifest-path "$root/fuzz/Cargo.toml" --release --locked --bins \
  --target-dir "$target_dir"
# The targets run two at a time (libFuzzer uses one core each), each
# writing to its own log; a crash in any fails the run.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
run_target() { # target
  local t=$1 corpus="$root/fuzz/corpus/$1" artifacts="$root/fuzz/artifacts/$1"
  mkdir -p "$corpus" "$artifacts"
  "$target_dir/release/$t" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" >"$logs/$t" 2>&1
}
targets=(blob_decode share_parse policy_parse config_parse requests envelope_open)
jobs=${FUZZ_JOBS:-$(nproc)}
total=0; failed=0; pids=(); names=()
finish() { # pid name
  if wait "$1"; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$2" | tail -1)
    total=$((total + execs))
    echo "fuzz $2: $execs executions in ${secs}s, no crash"
  else
    tail -40 "$logs/$2"
    echo "FUZZ FAILURE in $2 (input saved under $root/fuzz/artifacts/$2)"
    failed=1
  fi
}
for t in "${targets[@]}"; do
  if [ "${#pids[@]}" -ge "$jobs" ]; then
    finish "${pids[0]}" "${names[0]}"; pids=("${pids[@]:1}"); names=("${names[@]:1}")
  fi
  run_target "$t" & pids+=($!); names+=("$t")
done
for i in "${!pids[@]}"; do finish "${pids[$i]}" "${names[$i]}"; done
[ "$failed" = 0 ] || exit 1
echo "fuzz: $total executions over ${#targets[@]} targets, no crash"
