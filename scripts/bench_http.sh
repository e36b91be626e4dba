#!/usr/bin/env bash
# The gateway under load as users run it: builds the release example gateway and measures
# every row of the README's Performance table with wrk (benches/gateway_http.rs).
# QUICK=1 for a short try; ROWS=stdio,http,scale,redis to pick rows.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --features redis --example gateway
cargo bench --bench gateway_http
