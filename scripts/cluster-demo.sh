#!/usr/bin/env bash
# Three Keywarden nodes on one machine: a throwaway PostgreSQL server (as an
# unprivileged user, on a Unix socket in a temporary directory) holds the
# registry they share, and one SoftHSM token directory is their HSM. Walks
# through: a key created on node 1, a data key made on node 2 and opened on
# node 3, a disable on node 1 refused at once on nodes 2 and 3
# (docs/CLUSTER.md). Development only; leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --cluster
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== building (release)"
cargo build --release --locked --quiet
KW="$PWD/target/release/keywarden"

base=$(mktemp -d /tmp/kw-cluster-XXXXXX)
pids=()
cleanup() {
  # Nodes first (they let go of the database), then PostgreSQL.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  rm -rf "$base"
}
trap cleanup EXIT

# Waits until FILE has a line matching PATTERN (or PID died).
wait_for() {
  local file=$1 pattern=$2 pid=$3
  for _ in $(seq 1 600); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$file" "$file.log" >&2 2>/dev/null; exit 1; }
    sleep 0.1
  done
  echo "timed out waiting for '$pattern' in $file" >&2
  exit 1
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
on() { local n=$1; shift; printf '$ [node %s] keywarden %s\n' "$n" "$*" >&2; "$KW" --socket "$base/n$n/keywarden.sock" "$@"; }

step "PostgreSQL: a throwaway server for the shared registry"
"$KW" dev-postgres >"$base/pg.out" 2>"$base/pg.out.log" &
pids+=($!)
wait_for "$base/pg.out" '^Registry URL: ' "${pids[0]}"
url=$(sed -n 's/^Registry URL: //p' "$base/pg.out")
echo "registry: $url"

step "Node 1: a fresh token, initialised (dev mode: one share of threshold 1) and unsealed"
"$KW" dev --dir "$base/n1" --registry-url "$url" --node-id n1 >"$base/n1.out" 2>"$base/n1.out.log" &
pids+=($!)
wait_for "$base/n1.out" '^Unsealed\.' "${pids[1]}"
share=$(sed -n 's/^Unseal share: //p' "$base/n1.out")

for n in 2 3; do
  step "Node $n: joins node 1's token (the seal comes from PostgreSQL), starts sealed, is unsealed with the same share"
  "$KW" dev --dir "$base/n$n" --registry-url "$url" --node-id "n$n" --join "$base/n1" \
    >"$base/n$n.out" 2>"$base/n$n.out.log" &
  pids+=($!)
  wait_for "$base/n$n.out" 'keywarden operator unseal' "${pids[$n]}"
  echo "$share" | on "$n" operator unseal
done
for n in 1 2 3; do
  # Until the node holds its lease (it serves only while it does).
  for _ in $(seq 1 100); do
    "$KW" --socket "$base/n$n/keywarden.sock" key list >/dev/null 2>&1 && break
    sleep 0.1
  done
done

step "Admin on node 1: a customer-managed key"
on 1 key create patient-records --description "shared by every node"

step "Application on node 2: a data key bound to an encryption context"
on 2 datakey generate --key patient-records --context patient=p-123 --output json >"$base/gen.json"
blob=$(jq -r .ciphertext "$base/gen.json")
jq '{key, version, ciphertext: (.ciphertext[0:32] + "...")}' "$base/gen.json"

step "Application on node 3: unwraps it (the plaintext data key is the same bytes)"
a=$(jq -r .plaintext "$base/gen.json")
rm -f "$base/gen.json"
b=$(echo "$blob" | "$KW" --socket "$base/n3/keywarden.sock" datakey decrypt --context patient=p-123 --output json | jq -r .plaintext)
echo "\$ [node 3] keywarden datakey decrypt --context patient=p-123"
[ "$a" = "$b" ] && echo "(the same data key as node 2 made)" || { echo "UNEXPECTED: different bytes" >&2; exit 1; }

step "Admin on node 1: disable the key; the call returns once no node serves it"
start=$(date +%s%N)
on 1 key disable patient-records
echo "(returned after $(( ($(date +%s%N) - start) / 1000000 )) ms, including the CLI's start)"
for n in 2 3; do
  echo "\$ [node $n] keywarden datakey decrypt --context patient=p-123"
  if echo "$blob" | "$KW" --socket "$base/n$n/keywarden.sock" datakey decrypt --context patient=p-123 >/dev/null; then
    echo "UNEXPECTED: node $n served a disabled key" >&2
    exit 1
  fi
done
echo "(refused on nodes 2 and 3, as it must be)"

step "Admin on node 1: enable it again; node 3 serves at once"
on 1 key enable patient-records
echo "$blob" | "$KW" --socket "$base/n3/keywarden.sock" datakey decrypt --context patient=p-123 >/dev/null
echo "(node 3 decrypted)"

step "Done: stopping the nodes and PostgreSQL, removing everything"
