#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks, on this machine (as
# root), that it installs, upgrades, removes and purges cleanly and that the
# installed unit is hardened. Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked --version 3.8.0 --quiet || exit 1
fi
echo "== cargo deb (scripts/build-deb.sh)"
deb=$(bash scripts/build-deb.sh | tail -1)
[ -f "$deb" ] || { echo "cargo deb produced no package"; exit 1; }

passed=0; failed=0
check() { # name, command...
  local name=$1; shift
  if "$@" >/dev/null 2>&1; then passed=$((passed+1)); echo "PASS $name"
  else failed=$((failed+1)); echo "FAIL $name"; fi
}

dpkg --purge keywarden >/dev/null 2>&1 || true
check "dpkg -i installs" dpkg -i "$deb"
check "binary installed" test -x /usr/bin/keywarden
check "user and group exist" getent passwd keywarden
check "config is 0640 root:keywarden" test "$(stat -c '%a %U:%G' /etc/keywarden/keywarden.toml)" = "640 root:keywarden"
check "policy is 0640 root:keywarden" test "$(stat -c '%a %U:%G' /etc/keywarden/policy.toml)" = "640 root:keywarden"
check "state dir is 0700 keywarden" test "$(stat -c '%a %U' /var/lib/keywarden)" = "700 keywarden"
check "profiles installed" test -f /usr/share/keywarden/hsm-profiles/softhsm2.toml
check "service not enabled" sh -c '! systemctl is-enabled keywarden.service 2>/dev/null | grep -q enabled'
score=$(systemd-analyze security --offline=yes /lib/systemd/system/keywarden.service 2>/dev/null | sed -n 's/.*Overall exposure level for keywarden.service: \([0-9.]*\).*/\1/p')
echo "installed unit exposure: $score"
check "installed unit exposure <= 1.0" awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.0) }'
check "systemd-analyze verify" systemd-analyze verify /lib/systemd/system/keywarden.service /lib/systemd/system/keywarden.socket
check "keywarden --version runs" /usr/bin/keywarden --version
check "man pages installed" sh -c 'zcat /usr/share/man/man1/keywarden.1.gz | grep -q "keywarden\\\\-audit" && zcat /usr/share/man/man1/keywarden-audit-query.1.gz | grep -q "NAME=VALUE"'
check "bash completion loads" bash -c '. /usr/share/bash-completion/completions/keywarden && complete -p keywarden'
check "zsh and fish completions installed" test -s /usr/share/zsh/vendor-completions/_keywarden -a -s /usr/share/fish/vendor_completions.d/keywarden.fish
check "keywarden reload reads the shipped config and signals only a daemon" sh -c '/usr/bin/keywarden reload --pid $$ --config /etc/keywarden/keywarden.toml 2>&1 | grep -q "not a keywarden daemon"'
check "ExecReload needs no /bin/kill" sh -c '! grep -q "^ExecReload=/bin/kill" /lib/systemd/system/keywarden.service'

echo "# local edit" >> /etc/keywarden/keywarden.toml
check "reinstall (upgrade) keeps edited config" sh -c "DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold '$deb' && grep -q 'local edit' /etc/keywarden/keywarden.toml"
mkdir -p /var/lib/keywarden/audit && touch /var/lib/keywarden/registry.db
# As an administrator would; the links outlive `dpkg -r`, not a purge.
check "systemctl enable (links only, no running systemd needed)" systemctl enable keywarden.socket keywarden.service
check "dpkg -r" dpkg -r keywarden
check "remove keeps config" test -f /etc/keywarden/keywarden.toml
check "remove keeps state" test -f /var/lib/keywarden/registry.db
check "remove removes the binary" test ! -e /usr/bin/keywarden
check "remove leaves the enable links" test -L /etc/systemd/system/sockets.target.wants/keywarden.socket
check "dpkg --purge" dpkg --purge keywarden
check "purge removes the enable links" sh -c '! ls /etc/systemd/system/*.wants/keywarden.* 2>/dev/null | grep -q .'
check "purge removes config" test ! -e /etc/keywarden
check "purge keeps state (wrapped keys)" test -f /var/lib/keywarden/registry.db
rm -rf /var/lib/keywarden

echo "package: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
