# Sourced by the benchmark scripts that start their own processes: builds the release
# binary into $bin (or takes SEKISHO_BIN, another build, as it is), makes $tmp (removed
# at exit, with every process `start` began), and `start LOGFILE ARGS...` runs `sekisho
# ARGS...` in the background (under `${pin[@]}`, when a script sets it: e.g. taskset),
# waiting until it says it is listening.
if [ -n "${SEKISHO_BIN:-}" ]; then
  bin=$SEKISHO_BIN
else
  cargo build --release --locked -p sekisho-cli --bin sekisho
  bin=target/release/sekisho
fi
tmp=$(mktemp -d)
pids=()
pin=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
export SEKISHO_LOG=warn
start() { # logfile args...
  local log=$1; shift
  "${pin[@]}" "$bin" "$@" > "$tmp/$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$tmp/$log" && return; sleep 0.1; done
  echo "$log did not start" >&2; cat "$tmp/$log" >&2; exit 1
}
