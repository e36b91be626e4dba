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
cargo test --all-features --all-targets "$@"
cargo test --all-features --doc "$@"
scripts/smoke_gateway.sh
