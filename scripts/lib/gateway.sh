# Sourced by the scripts that run the example gateway.
# wait_for_keys PID LOG: waits until the gateway writes its export lines to LOG (it prints
# them when stdout is not a terminal and --print-keys is given), then evaluates them.
wait_for_keys() {
  local pid=$1 log=$2
  for _ in $(seq 1 100); do
    grep -q '^export PAYGATE_ADMIN_KEY=' "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "gateway exited early"; exit 1; }
    sleep 0.1
  done
  eval "$(grep '^export ' "$log")"
}
