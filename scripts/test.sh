#!/usr/bin/env bash
# Runs every test of the crate. Installs what the tests need when it is missing, so a fresh
# machine passes with no manual step.
set -euo pipefail
cd "$(dirname "$0")/.."
# apt_install WHY PACKAGE...: installs Debian packages, as root or through sudo.
apt_install() {
  local why=$1
  shift
  echo "installing $* ($why)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install "the Redis store tests start their own" redis-server
fi
# python3 runs the small fake MCP servers of the stdio tests; curl drives the README smoke run;
# openssl signs the README's Stripe walk-through event.
for tool in python3 curl openssl; do
  command -v "$tool" >/dev/null 2>&1 || apt_install "the tests need it" "$tool"
done
# Headless Chromium and its WebDriver for the dashboard's browser tests.
if ! command -v chromedriver >/dev/null 2>&1 || ! [ -x /usr/lib/chromium/chromium ]; then
  apt_install "the dashboard's browser tests drive them" chromium chromium-driver
fi
# A real third-party MCP server for the stdio upstream tests, from the npm registry.
EVERYTHING=@modelcontextprotocol/server-everything@2026.8.31
if [ ! -f .test-deps/node_modules/@modelcontextprotocol/server-everything/dist/index.js ]; then
  command -v npm >/dev/null 2>&1 ||
    apt_install "the stdio upstream tests run a Node MCP server" nodejs npm
  npm install --silent --no-audit --no-fund --prefix .test-deps "$EVERYTHING"
fi
cargo test --all-features --all-targets "$@"
cargo test --all-features --doc "$@"
scripts/smoke_gateway.sh
scripts/oauth_e2e.sh
scripts/stripe_walkthrough.sh
