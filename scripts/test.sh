#!/usr/bin/env bash
# Runs every test of the crate. Installs what the tests need when it is missing, so a fresh
# machine passes with no manual step.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (the Redis store tests start their own)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# python3 runs the small fake MCP servers of the stdio tests; curl drives the README smoke run;
# openssl signs the README's Stripe walk-through event.
for tool in python3 curl openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "installing $tool (the tests need it)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$tool" >/dev/null
  fi
done
# A real third-party MCP server for the stdio upstream tests, from the npm registry.
EVERYTHING=@modelcontextprotocol/server-everything@2026.8.31
if [ ! -f .test-deps/node_modules/@modelcontextprotocol/server-everything/dist/index.js ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm (the stdio upstream tests run a Node MCP server)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  npm install --silent --no-audit --no-fund --prefix .test-deps "$EVERYTHING"
fi
cargo test --all-features --all-targets "$@"
cargo test --all-features --doc "$@"
scripts/smoke_gateway.sh
scripts/oauth_e2e.sh
scripts/stripe_walkthrough.sh
