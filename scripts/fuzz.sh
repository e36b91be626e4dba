#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a fixed time: the JSON-RPC request parser,
# the SSE splitter and response watchers, the state-file loader and the admin body parsers.
#
#   scripts/fuzz.sh [SECONDS]      # seconds per target, default 60
#
# Environment: FUZZ_MAX_LEN (largest input, default 16384), FUZZ_TARGETS (space-separated
# subset). A panic, a timeout or memory use past 2 GiB (an unbounded allocation) fails the
# run; the failing input is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
MAX_LEN="${FUZZ_MAX_LEN:-16384}"
TARGETS="${FUZZ_TARGETS:-jsonrpc_request sse_events state_file admin_body}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "error: cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build --fuzz-dir fuzz

# The state-file target writes each input to a scratch file: keep that in memory when we can.
scratch="${TMPDIR:-/tmp}"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch=/dev/shm
fi

summary=()
for target in $TARGETS; do
  echo "== fuzzing $target for ${SECONDS_PER_TARGET}s"
  mkdir -p "fuzz/corpus/$target"
  log="$(mktemp)"
  status=0
  TMPDIR="$scratch" cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" \
    -max_len="$MAX_LEN" \
    -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 \
    -timeout=10 \
    -print_final_stats=1 2>&1 | tee "$log" || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  started="$(grep -c '^INFO: Seed:' "$log" || true)"
  rm -f "$log"
  if [ "$status" -ne 0 ] && [ "$started" = 0 ]; then
    echo "error: $target did not build (exit $status)" >&2
    exit "$status"
  elif [ "$status" -ne 0 ]; then
    echo "error: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
  summary+=("$target: ${runs:-?} runs in ${SECONDS_PER_TARGET}s, ${speed:-?} exec/s")
done

echo "== no crash"
printf '  %s\n' "${summary[@]}"
