#!/usr/bin/env bash
# `make gpu-check`: the CUDA checks, in one script for a GPU machine.
#   1. builds the worker and the check with PRUNE_CUDA=1 and proves with ldd that libtorch_cuda.so
#      is linked (the linker's --as-needed would drop it and hide every GPU);
#   2. without a CUDA device, says so and stops (exit 2): no GPU figure is invented;
#   3. runs engine/examples/gpu_check.rs: CUDA masks == CPU masks (element, global, block, 2:4),
#      a 4096x4096 mask update on cuda, the seed job's epochs on cuda, bitwise resume on cuda;
#   4. times the PyTorch eager loop of the same seed job on the same GPU, side by side.
# Afterwards a plain `make build` relinks the CPU-only binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export PRUNE_CUDA=1
cargo build -q -p prune-worker --bins
cargo build -q -p prune-engine --example gpu_check
for bin in target/debug/prune-worker target/debug/examples/gpu_check; do
  libs=$(ldd "$bin")  # not piped into `grep -q`: its early exit would fail the pipeline
  if grep -q 'libtorch_cuda\.so' <<<"$libs"; then
    echo "$bin links $(grep -o 'libtorch_cuda\.so => [^ ]*' <<<"$libs")"
  else
    echo "$bin does not link libtorch_cuda.so: the PRUNE_CUDA=1 build is broken" >&2
    exit 1
  fi
done
echo "devices a job can use here (prune-worker --devices): $(target/debug/prune-worker --devices | paste -sd' ')"
set +e
target/debug/examples/gpu_check
status=$?
set -e
[ "$status" = 2 ] && exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PRUNE_VENV/bin/python" scripts/bench-vs-tfmot/make_data.py "$work/data.safetensors"
echo "PyTorch eager, same job on cuda:0: $(DEVICE=cuda "$PRUNE_VENV/bin/python" scripts/bench-vs-tfmot/torch_eager.py "$work/data.safetensors" 2 128)"
exit "$status"
