#!/usr/bin/env bash
# The official MCP Python SDK signs in to the gateway with OAuth 2.1 and pays for a call
# (tests/python/oauth_e2e.py): discovery from the 401, registration, consent with an API key,
# PKCE token exchange, a paid tools/call, a refresh once the access token expires, and a 401
# after the key is revoked. The SDK is installed into .test-deps/pyvenv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/gateway.sh
venv=.test-deps/pyvenv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import mcp' 2>/dev/null; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    echo "installing python3-venv (the OAuth end-to-end test runs the MCP Python SDK)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==2.3.0"
fi
cargo build --quiet --example gateway
port=3493
log=$(mktemp)
work=$(mktemp -d)
pid=
# The gateway saves its state file as it stops: wait for it before removing the directory.
trap '{ kill $pid && wait $pid; } 2>/dev/null || true; rm -rf "$log" "$log.err" "$work" || true' EXIT

# Starts the gateway with OAuth on $port (and any extra flags) and reads its admin key.
start_gateway() {
  PAYGATE_ADMIN_KEY=oauth-e2e-admin-key-0123456789 \
    target/debug/examples/gateway --port "$port" --oauth --oauth-access-ttl "${ACCESS_TTL:-2}" --print-keys "$@" >"$log" 2>&1 &
  pid=$!
  wait_for_keys $pid "$log"
}

new_key() {
  curl -s -X POST "http://127.0.0.1:$port/keys" -H "X-Admin-Key: $PAYGATE_ADMIN_KEY" \
    -H 'Content-Type: application/json' -d '{"name":"oauth-e2e","credits":10}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

sdk() {
  GW_URL="http://127.0.0.1:$port" GW_ADMIN_KEY="$PAYGATE_ADMIN_KEY" \
    "$venv/bin/python" tests/python/oauth_e2e.py 2>"$log.err" ||
    { cat "$log.err"; echo "OAuth end-to-end ($*) failed"; exit 1; }
}

start_gateway
for method in none client_secret_basic; do
  # A fresh key per run: the script ends by revoking it.
  key=$(new_key)
  GW_API_KEY="$key" AUTH_METHOD="$method" sdk "$method"
done
echo "OAuth end-to-end with the MCP Python SDK: ok (none, client_secret_basic)"

# Tokens survive a restart: signed in before, the same tokens pay for a call after, with no
# new consent (the grants are saved in the state file with the keys). The access token lives
# long enough to outlast the restart: the SDK, given stored tokens, cannot tell they expired
# and answers a 401 by signing in again rather than refreshing.
export ACCESS_TTL=300
kill $pid && wait $pid || true
start_gateway --state-file "$work/state.json"
key=$(new_key)
GW_API_KEY="$key" PHASE=issue STORAGE_FILE="$work/tokens.json" sdk "sign in before a restart"
kill $pid && wait $pid || true
start_gateway --state-file "$work/state.json"
GW_API_KEY="$key" PHASE=resume STORAGE_FILE="$work/tokens.json" sdk "calls after a restart"
echo "OAuth tokens across a gateway restart (--state-file): ok"
