#!/usr/bin/env bash
# `make cluster-demo`: past one machine. A throwaway PostgreSQL 15, an S3 server (s3s-fs) and
# three prune-server nodes on loopback, all in a temporary directory removed on exit. The
# digits job (examples/digits_demo.toml) is submitted to node-0 with prunectl; once it has a
# checkpoint, the node running it is killed with `kill -9` of its process group (server and
# worker) and its data dir deleted; after its lease another node takes the job over from that
# checkpoint and finishes it. Prints the job's attempts before and after, then its report.
# Expects the binaries built (`make cluster-demo` does it) and `make setup` done (PostgreSQL and
# s3s-fs, see scripts/setup-postgres.sh and scripts/setup-s3s.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
LEASE_SECS=${LEASE_SECS:-3}
S3S="${PRUNE_S3S_ROOT:-$HOME/.cache/prune/s3s-fs}/bin/s3s-fs"
# PostgreSQL's server binaries and psql: Debian's postgresql-15 (scripts/setup-postgres.sh), else PATH.
PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PGBIN/psql" ] && command -v initdb >/dev/null 2>&1; then PGBIN=$(dirname "$(command -v initdb)"); fi
for tool in initdb pg_ctl psql; do
  [ -x "$PGBIN/$tool" ] || { echo "$tool not found in $PGBIN: run make setup" >&2; exit 1; }
done
[ -x "$S3S" ] || { echo "$S3S not found: run make setup" >&2; exit 1; }

work=$(mktemp -d)
chmod 755 "$work"
# PostgreSQL refuses to run as root: as root, its commands run as the postgres user.
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then AS_PG=(runuser -u postgres --); fi
node_pids=()
s3s_pid=
cleanup() {
  for pid in "${node_pids[@]}"; do
    [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
  done
  for pid in "${node_pids[@]}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  [ -n "$s3s_pid" ] && { kill "$s3s_pid" 2>/dev/null || true; wait "$s3s_pid" 2>/dev/null || true; }
  [ -d "$work/pg/data" ] && (cd / && "${AS_PG[@]}" "$PGBIN/pg_ctl" stop -D "$work/pg/data" -m immediate -s >/dev/null 2>&1) || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Polls a command until it succeeds, for at most $1 seconds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# PostgreSQL: initdb + pg_ctl start on a free port, database `prune`.
mkdir -p "$work/pg"
[ ${#AS_PG[@]} -eq 0 ] || chown postgres: "$work/pg"
pg_port=$(free_port)
(cd / && "${AS_PG[@]}" "$PGBIN/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null)
(cd / && "${AS_PG[@]}" "$PGBIN/pg_ctl" start -D "$work/pg/data" -l "$work/pg/server.log" -w -s \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")
psql() { (cd / && "${AS_PG[@]}" "$PGBIN/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -X -q "$@"); }
psql -d postgres -c "CREATE DATABASE prune"
database="postgres://postgres@127.0.0.1:$pg_port/prune"

# S3: s3s-fs over a directory, bucket `prune-demo`.
mkdir -p "$work/s3/prune-demo"
s3_port=$(free_port)
export AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=prune-demo-access-key AWS_SECRET_ACCESS_KEY=prune-demo-secret-key
RUST_LOG=warn "$S3S" --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" >"$work/s3s.log" 2>&1 &
s3s_pid=$!
wait_for 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$s3_port" 2>/dev/null || { echo "s3s-fs did not start:"; cat "$work/s3s.log"; exit 1; }
store="s3://prune-demo/cluster"

# Three nodes, each leading a process group of its own (job control), so that `kill -9 -PGID`
# takes the server and the workers it started with it.
set -m
addrs=()
for k in 0 1 2; do
  RUST_LOG=info "$BIN/prune-server" --listen 127.0.0.1:0 --data-dir "$work/node-$k" --database "$database" --store "$store" \
    --node-id "node-$k" --lease-secs "$LEASE_SECS" --workers 1 >"$work/node-$k.out" 2>"$work/node-$k.log" &
  node_pids[k]=$!
  if ! wait_for 60 grep -qs 'listening on' "$work/node-$k.out"; then
    echo "node-$k did not start:"; cat "$work/node-$k.log"; exit 1
  fi
  addrs[k]=$(grep -m1 'listening on' "$work/node-$k.out" | awk '{print $3}')
done
set +m
echo "PostgreSQL on 127.0.0.1:$pg_port, S3 (s3s-fs) on 127.0.0.1:$s3_port ($store)"
for k in 0 1 2; do echo "node-$k: prune-server on ${addrs[k]} (pid ${node_pids[k]}, lease ${LEASE_SECS} s)"; done

export PRUNE_ADDR="http://${addrs[0]}"
id=$("$BIN/prunectl" submit examples/digits_demo.toml)
echo "submitted $id to node-0: $(grep -m1 '^name' examples/digits_demo.toml)"

# The node running it: the one whose server has a worker process (one job, one worker each).
running_node() {
  local k
  for k in 0 1 2; do
    [ -n "${node_pids[k]}" ] && pgrep -P "${node_pids[k]}" >/dev/null && { echo "$k"; return 0; }
  done
  return 1
}
attempts() {
  psql -d prune -c "SELECT * FROM attempts WHERE job_id = '$id' ORDER BY attempt"
}
# The digits job trains for about a second here: watch the nodes' logs every 10 ms for the first
# checkpoint (`checkpoint written`), which also names the node that wrote it.
victim=
deadline=$((SECONDS + 300))
until [ -n "$victim" ]; do
  log=$(grep -l 'checkpoint written' "$work"/node-[0-9].log 2>/dev/null | head -1 || true)
  if [ -n "$log" ]; then victim=${log##*node-}; victim=${victim%.log}; break; fi
  [ "$SECONDS" -lt "$deadline" ] || { echo "no checkpoint within 300 s"; "$BIN/prunectl" status "$id"; exit 1; }
  sleep 0.01
done

workers=$(pgrep -P "${node_pids[victim]}" || true)
kill -KILL -- "-${node_pids[victim]}"
for w in $workers; do kill -KILL -- "-$w" 2>/dev/null || true; done
wait "${node_pids[victim]}" 2>/dev/null || true
killed_at=$SECONDS
echo
echo "=== node-$victim wrote the job's first checkpoint: kill -9 of its process group (server pid" \
     "${node_pids[victim]}, worker ${workers:-none}), data dir deleted ==="
node_pids[victim]=
rm -rf "$work/node-$victim"
grep 'checkpoint written' "$work/node-$victim.log" | tail -1 | sed 's/^.*checkpoint written/last checkpoint written:/'
echo
echo "=== before: the job as the kill left it (its lease still held by node-$victim) ==="
# Ask a surviving node from now on.
for k in 0 1 2; do [ -n "${node_pids[k]}" ] && { export PRUNE_ADDR="http://${addrs[k]}"; break; }; done
"$BIN/prunectl" status "$id"
attempts
echo "(asking node-$k, $PRUNE_ADDR, from now on)"
wait_for $((20 * LEASE_SECS + 60)) running_node >/dev/null || { echo "nobody took the job over"; attempts; exit 1; }
echo "taken over by node-$(running_node) $((SECONDS - killed_at)) s after the kill"
"$BIN/prunectl" watch "$id"

echo
echo "=== after ==="
"$BIN/prunectl" status "$id"
attempts
echo
"$BIN/prunectl" report "$id"
"$BIN/prunectl" download "$id" -o "$work/digits-pruned.safetensors" --raw >/dev/null
echo "artifact: $(stat -c %s "$work/digits-pruned.safetensors") bytes, sha256 $(sha256sum "$work/digits-pruned.safetensors" | cut -c1-16)..."
