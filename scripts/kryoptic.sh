#!/usr/bin/env bash
# The integration suite on a second, independent PKCS#11 token: builds
# Kryoptic (testing/kryoptic-token: the kryoptic-lib crate with its
# `minimal` features, linked to the system OpenSSL) and runs the token-facing
# test binaries with KEYWARDEN_TEST_TOKEN=kryoptic. Needs libclang-dev and
# libssl-dev (scripts/install-deps.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --locked --manifest-path testing/kryoptic-token/Cargo.toml
module="$root/testing/kryoptic-token/target/release/libkryoptic_pkcs11.so"
export KEYWARDEN_TEST_TOKEN=kryoptic KEYWARDEN_KRYOPTIC_MODULE="$module"
# The crash test's rounds matter for the daemon, not the token: fewer here.
export KEYWARDEN_CRASH_ROUNDS=${KEYWARDEN_CRASH_ROUNDS_KRYOPTIC:-10}
runner=(test)
cargo nextest --version >/dev/null 2>&1 && runner=(nextest run)
cargo "${runner[@]}" --workspace --locked --no-fail-fast \
  --test datakeys --test lifecycle --test unseal --test access --test cli --test review --test acknowledge \
  --test reliability --test faults --test hsm_contract --test backup
