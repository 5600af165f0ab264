# Sourced by the scripts that drive a real prune-server (demo, benchmarks).
# `start_server WORK [ARGS...]`: target/debug/prune-server (or $BIN) on a free loopback port with
# its data in WORK/var and ARGS added; returns once it accepts connections, with PRUNE_ADDR
# exported and server_pid set. `stop_server`: stops it (call it from the caller's EXIT trap).
BIN=${BIN:-target/debug}
server_pid=

start_server() {
  local work=$1 addr
  shift
  mkfifo "$work/ready"
  "$BIN/prune-server" --listen 127.0.0.1:0 --data-dir "$work/var" "$@" >"$work/ready" 2>"$work/server.log" &
  server_pid=$!
  # The server prints `listening on ADDR` once it accepts connections.
  addr=$(grep -m1 'listening on' "$work/ready" | awk '{print $3}')
  [ -n "$addr" ] || { echo "server did not start:"; cat "$work/server.log"; exit 1; }
  cat "$work/ready" >/dev/null &
  export PRUNE_ADDR="http://$addr"
}

stop_server() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
}
