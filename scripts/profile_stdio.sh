#!/usr/bin/env bash
# Where the gateway's CPU goes when it wraps a stdio MCP server: builds the example gateway
# with frame pointers (into target/frame-pointers), runs the stdio row of
# benches/gateway_http.rs under `perf record`, and prints the inclusive share of the
# gateway's CPU in each part of a call. REV=<commit> profiles another commit instead (built
# from a git worktree), to compare before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
src=$root
if [ -n "${REV:-}" ]; then
  src=$root/target/profile-worktree
  git worktree remove --force "$src" 2>/dev/null || true
  git worktree add --detach "$src" "$REV" >/dev/null
fi
target=$root/target/frame-pointers${REV:+-$REV}
(cd "$src" && RUSTFLAGS="-Cforce-frame-pointers=yes" CARGO_TARGET_DIR=$target \
  cargo build --release --example gateway)
data=$target/stdio.perf.data
GATEWAY_BIN=$target/release/examples/gateway PERF_DATA=$data ROWS=stdio \
  cargo bench --bench gateway_http
# Inclusive shares of the gateway's samples, for the frames that name the parts of a call.
perf report -i "$data" --children --stdio -g none --percent-limit 1 \
  --sort symbol 2>/dev/null | grep -E '^ +[0-9]' | head -60
