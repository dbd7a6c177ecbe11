#!/usr/bin/env bash
# The whole test suite: formatting, clippy with -D warnings, unit tests and
# end-to-end tests (the real daemon on fresh SoftHSM tokens over a real
# socket). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
# Each section header shows the seconds since the suite started, so slow
# parts show in the log.
SECONDS=0
section() { echo "== [${SECONDS}s] $*"; }
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

if cargo fmt --version >/dev/null 2>&1; then
  section "cargo fmt --check"
  cargo fmt --all -- --check
elif [ "${CI:-}" = "true" ]; then
  echo "rustfmt is missing" >&2; exit 1
else
  echo "== rustfmt not installed: skipping the format check" >&2
fi

if cargo clippy --version >/dev/null 2>&1; then
  section "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
elif [ "${CI:-}" = "true" ]; then
  echo "clippy is missing" >&2; exit 1
else
  echo "== clippy not installed: skipping lints" >&2
fi

# cargo-nextest (.config/nextest.toml) runs the tests several at a time, the
# longest first; plain cargo test runs one test binary after another.
# --workspace also builds the PKCS#11 fault-injection shim (tests/faults.rs).
if cargo nextest --version >/dev/null 2>&1; then
  section "cargo nextest run"
  cargo nextest run --workspace --locked --all-targets --no-fail-fast
else
  section "cargo test (cargo-nextest is not installed)"
  cargo test --workspace --locked --all-targets --no-fail-fast
fi

section "the Python client and the PostgreSQL example"
bash scripts/python-test.sh

section "the token-facing tests again, on Kryoptic (a second PKCS#11 token)"
bash scripts/kryoptic.sh

section "Debian package: build, install, upgrade, remove, purge"
bash scripts/package-test.sh

section "the packaged unit under systemd as PID 1 (systemd-nspawn --boot)"
bash scripts/systemd-test.sh

section "fuzz smoke run (each libFuzzer target for ${FUZZ_SECONDS:-10} s)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
section "done"
