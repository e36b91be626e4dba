#!/usr/bin/env bash
# Starts the gateway exactly as the README says and runs the README's curl lines against it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/gateway.sh
cargo build --quiet --example gateway
log=$(mktemp)
# Output goes to a file, not a terminal: --print-keys asks for the export lines there.
cargo run --quiet --example gateway -- --print-keys >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
wait_for_keys $pid "$log"
[ -n "${PAYGATE_KEY:-}" ] || { cat "$log"; echo "no API key printed"; exit 1; }
ran=0
while IFS= read -r line; do
  out=$(bash -c "$line")
  if ! grep -q '"jsonrpc":"2.0"' <<<"$out"; then
    echo "README command gave no JSON-RPC answer: $line"; echo "$out"; exit 1
  fi
  ran=$((ran + 1))
done < <(sed -n '/^## Try the gateway/,/^## /p' README.md | grep '^curl ')
[ "$ran" -ge 4 ] || { echo "expected at least 4 README curl lines, ran $ran"; exit 1; }
# The key paid for exactly the two successful calls.
balance=$(curl -si http://127.0.0.1:3402/mcp -H 'Content-Type: application/json' -H "X-API-Key: $PAYGATE_KEY" \
  -d '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{}}}' | tr -d '\r' | awk -F': ' 'tolower($1)=="x-credits-remaining"{print $2}')
[ "$balance" = "97" ] || { echo "expected 97 credits left, got '$balance'"; exit 1; }
# Every admin API line of the README (and the 1.8 section's) answers 2xx.
admin=0
while IFS= read -r line; do
  # The last three characters: a line that also prints headers (-D -) keeps them before.
  code=$(bash -c "$line -o /dev/null -w '%{http_code}'" | tail -c 3)
  case "$code" in
    2??) ;;
    *) echo "README admin command answered $code: $line"; exit 1 ;;
  esac
  admin=$((admin + 1))
done < <(sed -n '/^## Coming from paygate-mcp/,/^## Admin API/p; /^## Admin API/,/^## /p' README.md | grep '^curl ')
[ "$admin" -ge 16 ] || { echo "expected at least 15 README admin lines, ran $admin"; exit 1; }
# A browser's preflight is answered (CORS, any origin by default).
preflight=$(curl -si -X OPTIONS http://127.0.0.1:3402/mcp -H 'Origin: https://app.example' \
  -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: x-api-key, content-type' | tr -d '\r')
grep -qi '^access-control-allow-origin: \*' <<<"$preflight" || { echo "no CORS preflight answer: $preflight"; exit 1; }
grep -qi '^access-control-allow-headers:.*x-api-key' <<<"$preflight" || { echo "preflight does not allow X-API-Key: $preflight"; exit 1; }
echo "gateway smoke: $ran MCP and $admin admin README commands ok, balance $balance"
