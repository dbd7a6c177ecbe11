#!/usr/bin/env bash
# Installs what Keywarden needs to build and test on Debian 12, idempotently:
# SoftHSM 2, OpenSC (pkcs11-tool), a C toolchain, and a Rust
# toolchain (the machine's rustup toolchain if present, else Debian's
# rustc-web/cargo-web, which are recent enough).
set -euo pipefail

# (No protoc: the .proto files are compiled by protox, in Rust.)
# --test adds what only the test suite needs: libclang and OpenSSL headers
# to build Kryoptic, the second token (scripts/kryoptic.sh); Python's venv
# for the Python client's suite (scripts/python-test.sh installs its pinned
# packages from PyPI into a virtualenv); PostgreSQL for the database example;
# Prometheus (and its promtool) for the metrics test, which starts its own
# server on loopback; rsyslog for the audit-forwarding test, which starts
# its own rsyslogd on loopback (the package's own service is left alone);
# debootstrap and systemd-container to boot the packaged unit under systemd
# as PID 1 in a container (scripts/systemd-test.sh).
pkgs=(softhsm2 opensc build-essential pkg-config ca-certificates age jq systemd dpkg-dev libssl-dev openssl libsqlite3-dev)
# --cluster adds PostgreSQL alone, for scripts/cluster-demo.sh.
if [ "${1:-}" = "--test" ]; then
  pkgs+=(libclang-dev libssl-dev python3 python3-venv postgresql prometheus rsyslog debootstrap systemd-container)
elif [ "${1:-}" = "--cluster" ]; then
  pkgs+=(postgresql)
fi
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  need+=(rustc-web cargo-web)
fi

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "install-deps: no cargo after install" >&2; exit 1; }
echo "install-deps: ok ($(cargo --version), $(softhsm2-util --version 2>/dev/null | head -1 | sed 's/^/softhsm2 /'))" >&2
