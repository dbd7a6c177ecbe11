#!/usr/bin/env bash
# Boots the packaged unit under systemd as PID 1: a Debian 12 root made
# with debootstrap, the package installed in it, booted with
# `systemd-nspawn --boot`, and the service driven from inside (nsenter):
# socket activation, the init ceremony and unseal, STATUS= as the seal
# changes, `systemctl reload` with a good and a refused policy, journal
# fields, a clean stop. Prints "N passed, M failed"; exits non-zero on a
# failure. Needs root, debootstrap and systemd-container
# (scripts/install-deps.sh --test), and Debian's mirror
# (KEYWARDEN_DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -uo pipefail
cd "$(dirname "$0")/.."
deb=${1:-$(ls target/debian/keywarden_*.deb 2>/dev/null | tail -1)}
[ -f "$deb" ] || { echo "systemd-test: no package (run scripts/build-deb.sh)"; exit 1; }
mirror=${KEYWARDEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/keywarden-nspawn.XXXXXX)
# The container's /: mktemp made it 0700, which only root could cross.
chmod 0755 "$root"
nspawn=""
cleanup() {
  [ -n "$nspawn" ] && kill "$nspawn" 2>/dev/null && wait "$nspawn" 2>/dev/null
  rm -rf "$root"
}
trap cleanup EXIT

echo "== debootstrap (Debian 12, minbase, systemd, softhsm2) into $root"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,softhsm2,opensc,jq \
  bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
  { tail -20 "$root.debootstrap.log"; rm -f "$root.debootstrap.log"; exit 1; }
rm -f "$root.debootstrap.log"
cp "$deb" "$root/root/keywarden.deb"
chroot "$root" dpkg -i /root/keywarden.deb >/dev/null 2>&1 || { echo "dpkg -i failed in the root"; exit 1; }

echo "== systemd-nspawn --boot"
systemd-nspawn --boot -D "$root" --register=no --keep-unit --private-network \
  --console=pipe >/dev/null 2>&1 &
nspawn=$!
leader=""
for _ in $(seq 100); do
  leader=$(pgrep -P "$nspawn" | head -1)
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "the container did not start"; exit 1; }
inside() { timeout 60 nsenter -t "$leader" -a "$@"; }
for _ in $(seq 120); do
  state=$(inside systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 0.5
done
echo "container: systemd is $state"

passed=0; failed=0
check() { # name, command...
  local name=$1; shift
  if "$@" >/dev/null 2>&1; then passed=$((passed+1)); echo "PASS $name"
  else failed=$((failed+1)); echo "FAIL $name"; fi
}
status_text() { inside systemctl show -p StatusText --value keywarden.service; }
# The STATUS= line says $1 within 5 s (the watchdog's tick is 60 s away).
status_is() {
  for _ in $(seq 50); do
    case "$(status_text)" in $1*) return 0 ;; esac
    sleep 0.1
  done
  echo "STATUS= is: $(status_text)" >&2
  return 1
}

check "systemd runs as PID 1 in the container" test "$state" = running -o "$state" = degraded
inside runuser -u keywarden -- env SOFTHSM2_CONF=/etc/keywarden/softhsm2.conf \
  softhsm2-util --init-token --free --label keywarden --so-pin so-secret-1 --pin user-secret-1 >/dev/null
inside sh -c 'install -d -m 0700 /run/keywarden-setup && printf user-secret-1 >/run/keywarden-setup/user.pin && printf so-secret-1 >/run/keywarden-setup/so.pin'
check "the socket is enabled and listening" inside systemctl enable --now keywarden.socket
check "the first connection starts the service (socket activation)" \
  sh -c "timeout 60 nsenter -t $leader -a keywarden --output json status | grep -q '\"phase\": \"uninitialized\"'"
check "STATUS= says uninitialized" status_is uninitialized
inside keywarden --output json operator init --shares 3 --threshold 2 --label a --label b --label c \
  --pin-file /run/keywarden-setup/user.pin --so-pin-file /run/keywarden-setup/so.pin >"$root/root/shares.json" 2>/dev/null
check "the init ceremony issues 3 shares" test "$(jq '.shares | length' "$root/root/shares.json")" = 3
jq -r '.shares[0].share' "$root/root/shares.json" | inside keywarden operator unseal >/dev/null 2>&1
check "STATUS= follows the first share at once" status_is "sealed (1 of 2"
jq -r '.shares[1].share' "$root/root/shares.json" | inside keywarden operator unseal >/dev/null 2>&1
check "STATUS= says unsealed at once" status_is unsealed
check "a CMK is created" inside keywarden key create patients
check "systemctl reload succeeds with a good policy" inside systemctl reload keywarden.service
inside cp /etc/keywarden/policy.toml /root/policy.good
inside sh -c 'printf "[[principal]]\nroles = [\"app\"]\n" >> /etc/keywarden/policy.toml'
check "systemctl reload fails when the policy is refused" sh -c "! timeout 60 nsenter -t $leader -a systemctl reload keywarden.service"
inside cp /root/policy.good /etc/keywarden/policy.toml
check "the daemon still serves after the refused reload" inside keywarden key show patients
check "the journal carries native fields (KW_EVENT)" \
  sh -c "timeout 60 nsenter -t $leader -a journalctl -u keywarden.service -o json KW_EVENT=unseal | grep -q keywarden::audit"
check "the journal has the refused reload" \
  sh -c "timeout 60 nsenter -t $leader -a journalctl -u keywarden.service -o cat | grep -q 'policy reload refused'"
check "keywarden operator seal" sh -c "timeout 60 nsenter -t $leader -a keywarden operator seal"
check "STATUS= says sealed" status_is sealed
check "a clean stop" inside systemctl stop keywarden.service keywarden.socket
check "the service is inactive" sh -c "test \"\$(timeout 60 nsenter -t $leader -a systemctl is-active keywarden.service)\" = inactive"
inside systemctl poweroff >/dev/null 2>&1 || true
for _ in $(seq 100); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done

echo "systemd: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
