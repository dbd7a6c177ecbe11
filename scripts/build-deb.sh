#!/usr/bin/env bash
# Builds the Debian package: the release binary, then the man pages and
# shell completions it generates from its own command-line definition
# (`keywarden man`, `keywarden completions`), then cargo-deb without a second
# build. Prints the package's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --bin keywarden >&2
bin="${CARGO_TARGET_DIR:-target}/release/keywarden"
# Cargo.toml's deb assets name this directory.
assets=target/package-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" man --dir "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/keywarden.bash"
"$bin" completions zsh >"$assets/completions/_keywarden"
"$bin" completions fish >"$assets/completions/keywarden.fish"
cargo deb --locked --no-build | tail -1
