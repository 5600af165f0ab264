#!/usr/bin/env bash
# Channel pruning side by side (part of `make bench`): examples/cnn_digits_channels.toml through
# a default prune-server (timed from `prunectl submit` to SUCCEEDED), its slim artifact loaded
# into plain PyTorch, against the same CNN trained dense and pruned by Torch-Pruning 1.6.1 with
# the same data, recipe and channel schedule (scripts/bench-channels/compare.py). Installs
# torch-pruning into the cached venv on first use. Expects the binaries built.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/server.sh
JOB=${JOB:-examples/cnn_digits_channels.toml}
work=$(mktemp -d)
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT

if ! "$PRUNE_VENV/bin/python" -c 'import torch_pruning' 2>/dev/null; then
  # --no-deps: its only other dependency, numpy, is in the venv; torch must stay 2.13.0.
  "$PRUNE_VENV/bin/pip" install -q --no-deps torch-pruning==1.6.1
fi
start_server "$work"
t0=$(date +%s.%N)
id=$("$BIN/prunectl" submit "$JOB")
"$BIN/prunectl" watch "$id" >/dev/null
t1=$(date +%s.%N)
"$BIN/prunectl" report "$id" --json >"$work/report.json"
"$BIN/prunectl" download "$id" -o "$work/slim.safetensors" >/dev/null
"$PRUNE_VENV/bin/python" scripts/bench-channels/compare.py "$JOB" "$work/slim.safetensors" "$work/report.json" \
  "$(echo "$t1 - $t0" | bc -l)"
