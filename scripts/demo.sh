#!/usr/bin/env bash
# Installs what is needed, builds Keywarden, starts a dev daemon on a
# throwaway SoftHSM token and walks through what each kind of user does.
# Leaves nothing behind: the dev directory is removed when the daemon stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== building (release)"
cargo build --release --locked --quiet
KW="$PWD/target/release/keywarden"

out=$(mktemp)
"$KW" dev --ceremony >"$out" 2>"$out.log" &
dev_pid=$!
cleanup() {
  kill -TERM "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  rm -f "$out" "$out.log" "$out.init" "$out.gen" "$out.backup" "$out.backup.kw" "$out.restored"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
  grep -q '^  socket:' "$out" 2>/dev/null && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$out.log" >&2; exit 1; }
  sleep 0.1
done
cat "$out"
export KEYWARDEN_SOCKET
KEYWARDEN_SOCKET=$(awk '/^  socket:/ {print $2}' "$out")
DEVDIR=$(awk '/^  directory:/ {print $2}' "$out")

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "Operator: the daemon, its HSM token and health"
show "$KW" status

step "Custodians: the init ceremony, 2 of 3 (alice, bob, carol)"
echo "The token's provisioning PINs are given once, by file; afterwards they no longer work."
echo "\$ keywarden operator init --shares 3 --threshold 2 --label alice --label bob --label carol --pin-file ... --so-pin-file ... --output json"
"$KW" operator init --shares 3 --threshold 2 --label alice --label bob --label carol \
  --pin-file "$DEVDIR/user.pin" --so-pin-file "$DEVDIR/so.pin" --output json >"$out.init"
jq -r '.shares[] | "  \(.label): \(.share)"' "$out.init"
share() { jq -r ".shares[$1].share" "$out.init"; }
show "$KW" status

step "Custodians: unseal (each share is read from a hidden prompt or stdin, never from argv)"
echo "\$ keywarden operator unseal    # alice"
share 0 | "$KW" operator unseal
echo "\$ keywarden operator unseal    # carol"
share 2 | "$KW" operator unseal

step "Admin: create a customer-managed key (AES-256, generated inside the HSM, never extractable)"
show "$KW" key create patient-records --description "EHR attachments, clinic 1"
show "$KW" key list

step "Application: a data key for envelope encryption, bound to an encryption context"
echo "\$ keywarden datakey generate --key patient-records --context tenant=clinic-1 --context record=mri-0042 --output json"
"$KW" datakey generate --key patient-records --context tenant=clinic-1 --context record=mri-0042 --output json | tee "$out.gen"
blob=$(jq -r .ciphertext "$out.gen")
rm -f "$out.gen"

step "Application: unwrap it later with the same context"
echo "\$ echo \$blob | keywarden datakey decrypt --context tenant=clinic-1 --context record=mri-0042"
echo "$blob" | "$KW" datakey decrypt --context tenant=clinic-1 --context record=mri-0042

step "Application: a different context is refused"
echo "\$ echo \$blob | keywarden datakey decrypt --context tenant=clinic-2 --context record=mri-0042"
if echo "$blob" | "$KW" datakey decrypt --context tenant=clinic-2 --context record=mri-0042; then
  echo "UNEXPECTED: a wrong context decrypted" >&2
  exit 1
fi
echo "(refused, as it must be)"

step "Application: encrypt a backup with keywarden encrypt (any size, constant memory); tampering is refused"
head -c 5000000 /dev/urandom >"$out.backup"
show "$KW" encrypt --key patient-records --context backup=2026-12-01 -i "$out.backup" -o "$out.backup.kw"
show "$KW" inspect -i "$out.backup.kw"
show "$KW" decrypt --context backup=2026-12-01 -i "$out.backup.kw" -o "$out.restored"
cmp "$out.backup" "$out.restored" && echo "(the restored bytes are the same)"
echo "\$ head -c 1000000 backup.kw | keywarden decrypt --context backup=2026-12-01 >/dev/null"
if head -c 1000000 "$out.backup.kw" | "$KW" decrypt --context backup=2026-12-01 >/dev/null; then
  echo "UNEXPECTED: a truncated backup decrypted" >&2
  exit 1
fi
echo "(refused, as it must be)"

step "Operator: seal; key operations are refused until custodians unseal again"
show "$KW" operator seal
if echo "$blob" | "$KW" datakey decrypt --context tenant=clinic-1 --context record=mri-0042; then
  echo "UNEXPECTED: a sealed daemon decrypted" >&2
  exit 1
fi
share 1 | "$KW" operator unseal
share 0 | "$KW" operator unseal
echo "$blob" | "$KW" datakey decrypt --context tenant=clinic-1 --context record=mri-0042
rm -f "$out.init"

step "Done: stopping the dev daemon and removing its throwaway token"
