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
# The README's parts of a call: inclusive shares of the gateway's samples for the frames that
# name them, and the own time of the allocator and of thread switches.
perf script -i "$data" -F comm,ip,sym 2>/dev/null | python3 -c '
import sys
parts = [
    ("sending the response (hyper poll_write)", "Dispatcher<D,Bs,I,T>::poll_write"),
    ("  of which writev", "__GI___writev"),
    ("the layer (route::handle)", "layer::route::handle"),
    ("  key, address and headers", "request::context_of"),
    ("  strict JSON-RPC parse", "jsonrpc::parse_request"),
    ("  the charge", "as paygate_mcp::store::KeyStore>::charge"),
    ("  the call span", "layer::route::call_span"),
    ("  the stdio upstream call", "StdioUpstream>::call"),
    ("recording the call", "PendingUsage<St> as core::ops::drop::Drop"),
    ("  the audit log", "paygate_mcp::audit::"),
    ("stdio writer task", "framing::write_loop"),
    ("stdio reader task", "framing::read_loop"),
]
own = [("malloc and free (own)", ("malloc", "cfree", "_int_free", "realloc", "unlink_chunk")),
       ("switching threads (own)", ("finish_task_switch",))]
samples, frames = [], []
for line in sys.stdin:
    if line.startswith("\t"):
        frames.append(line.strip().split(" ", 1)[-1])
    elif line.strip():
        if frames: samples.append(frames)
        frames = []
if frames: samples.append(frames)
n = max(len(samples), 1)
print(f"{len(samples)} samples")
for name, frame in parts:
    hits = sum(1 for s in samples if any(frame in f for f in s))
    print(f"{100 * hits / n:5.1f} %  {name}")
for name, words in own:
    hits = sum(1 for s in samples if any(w in s[0] for w in words))
    print(f"{100 * hits / n:5.1f} %  {name}")
'
