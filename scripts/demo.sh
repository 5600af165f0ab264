#!/usr/bin/env bash
# `make demo`: the main job end to end, through the real server and prunectl.
# Starts prune-server with its embedded SQLite in a temporary data dir, trains the digits MLP
# dense and prunes it 50% -> 80% (examples/digits_demo.toml), downloads the artifact, prints a
# before/after table, and stops the server. Expects the binaries built (`make demo` does it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/server.sh
work=$(mktemp -d)
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT

start_server "$work" --workers 1
echo "prune-server listening on ${PRUNE_ADDR#http://} (data dir $work/var)"

id=$("$BIN/prunectl" submit examples/digits_demo.toml)
echo "submitted $id: $(grep -m1 '^name' examples/digits_demo.toml)"
"$BIN/prunectl" watch "$id"
"$BIN/prunectl" download "$id" -o "$work/digits-pruned.safetensors" --raw >/dev/null
"$BIN/prunectl" download "$id" -o "$work/digits-pruned-packed.safetensors" >/dev/null
"$BIN/prunectl" unpack "$work/digits-pruned-packed.safetensors" -o "$work/digits-pruned-dense.safetensors" >/dev/null
echo
"$BIN/prunectl" report "$id"
echo
echo "artifact: $(stat -c %s "$work/digits-pruned.safetensors") bytes as served (bitmask + zstd)," \
     "$(stat -c %s "$work/digits-pruned-packed.safetensors") bytes decompressed (compressed-tensors sparse-bitmask layout)," \
     "$(stat -c %s "$work/digits-pruned-dense.safetensors") bytes after \`prunectl unpack\` (plain dense safetensors)"
"$PRUNE_VENV/bin/python" - "$work/digits-pruned-dense.safetensors" <<'PY'
import sys
from safetensors.torch import load_file
sd = load_file(sys.argv[1])
print("loaded with safetensors.torch:", ", ".join(f"{k} {tuple(v.shape)} {float((v == 0).float().mean()):.0%} zeros" for k, v in sd.items()))
PY
