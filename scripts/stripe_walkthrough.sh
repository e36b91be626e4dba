#!/usr/bin/env bash
# Runs the README's "Selling credits with Stripe" walk-through as printed: the gateway started
# with its Stripe flags, then the signed-event lines. The first post must credit, the second
# must not, and the balance must have grown by the credits once.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/gateway.sh
section=$(sed -n '/^## Selling credits with Stripe/,/^## /p' README.md)
start=$(grep '^cargo run --example gateway -- --stripe' <<<"$section")
[ -n "$start" ] || { echo "no gateway command in the README's Stripe section"; exit 1; }
command -v openssl >/dev/null || { echo "openssl is needed (the walk-through signs with it)"; exit 1; }
cargo build --quiet --example gateway
log=$(mktemp)
bash -c "$start --print-keys" >"$log" 2>&1 &
pid=$!
trap 'pkill -P $pid 2>/dev/null || true; kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
wait_for_keys $pid "$log"
before=$(curl -s http://127.0.0.1:3402/balance -H "X-API-Key: $PAYGATE_KEY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["credits"])')
lines=$(awk '/^Try it without Stripe/{p=1} p' <<<"$section" | sed -n '/^```sh$/,/^```$/p' | grep -v '^```')
out=$(PAYGATE_KEY="$PAYGATE_KEY" bash -c "set -euo pipefail; $lines")
# The curl answers follow each other without newlines: read them as consecutive JSON values.
python3 - "$out" "$before" <<'PY' || exit 1
import json, sys
text, before = sys.argv[1], int(sys.argv[2])
dec, values, i = json.JSONDecoder(), [], 0
while i < len(text):
    v, i = dec.raw_decode(text, i)
    values.append(v)
first, second, balance = values
assert first.get("credited") is True, f"first delivery did not credit: {first}"
assert second.get("credited") is False, f"second delivery credited again: {second}"
assert balance["credits"] == before + 500, f"balance {before} -> {balance['credits']}, expected +500 once"
print(f"Stripe walk-through: credited once ({before} -> {balance['credits']})")
PY
