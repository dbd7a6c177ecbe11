#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS each (default 60) and prints the
# executions per target. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`); not part of CI (see docs/RELIABILITY.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
for t in blob_decode share_parse policy_parse config_parse requests; do
  out=$(cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1) || {
    echo "$out" | tail -30
    echo "FUZZ FAILURE in $t"
    exit 1
  }
  execs=$(echo "$out" | sed -n 's/^stat::number_of_executed_units: *//p' | tail -1)
  echo "$t: $execs executions in ${secs}s, no crash"
done
