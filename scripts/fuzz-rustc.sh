#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/fuzz.sh: adds SanitizerCoverage instrumentation
# (and `--cfg fuzzing`) to Keywarden's own crates and the fuzz targets only.
# Every other crate compiles exactly as in a plain `cargo build --release`,
# so the fuzz build reuses the dependencies the package build already made
# in target/release instead of compiling all of them a second time.
# fuzz/Cargo.toml gives the instrumented crates their own profile settings
# (opt-level 1, debug assertions, overflow checks): cargo's artefact hash
# includes those, so an instrumented and a plain build of the same crate
# never share an artefact.
set -euo pipefail
rustc=$1
shift
instrument=
prev=
for arg in "$@"; do
  if [ "$prev" = "--crate-name" ]; then
    case "$arg" in
      keywarden | keywarden_client | keywarden_proto) instrument=1 ;;
    esac
  fi
  case "$arg" in
    */fuzz/fuzz_targets/*.rs | fuzz_targets/*.rs) instrument=1 ;;
  esac
  prev=$arg
done
if [ -z "$instrument" ]; then
  exec "$rustc" "$@"
fi
exec "$rustc" "$@" --cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares
