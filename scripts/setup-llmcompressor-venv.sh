#!/usr/bin/env bash
# Creates (once) the cached virtualenv that `make bench-llm` runs llm-compressor in:
# llmcompressor 0.14.0.1 (vllm-project; `oneshot` with WandaPruningModifier / SparseGPTModifier)
# on torch 2.13.0, the libtorch the service itself links (same kernels, like with like).
# Separate from the libtorch venv: llmcompressor 0.14 requires transformers >= 5.15 and
# compressed-tensors 0.19.0, while the project's tests need transformers 4.57 and
# compressed-tensors 0.14.0.1 (the last release with sparsity compressors).
# PyPI only: its torch 2.13.0 is the CUDA build (nvidia-* wheels, a few GB); CPU threads are what
# the benchmark uses. Idempotent (a stamp file); prints the venv's path.
set -euo pipefail
VENV="${PRUNE_LLMC_VENV:-$HOME/.cache/prune/venv-llmcompressor}"
STAMP="$VENV/.prune-ready-v1"
if [ ! -f "$STAMP" ]; then
  PY="${PYTHON:-python3}"
  echo "setting up $VENV (llmcompressor 0.14.0.1, torch 2.13.0, transformers 5.17.0 from PyPI, a few GB, once)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  # No pip cache: the wheels (torch's CUDA libraries among them) would take as much disk again.
  PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir)
  "${PIP[@]}" --upgrade pip >&2
  "${PIP[@]}" llmcompressor==0.14.0.1 torch==2.13.0 transformers==5.17.0 compressed-tensors==0.19.0 \
    safetensors numpy psutil >&2
  "$VENV/bin/python" -c '
import torch, transformers, llmcompressor
from llmcompressor.modifiers.pruning import WandaPruningModifier, SparseGPTModifier
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("llmcompressor", llmcompressor.__version__, "torch", torch.__version__, "transformers", transformers.__version__)
' >&2
  touch "$STAMP"
fi
echo "$VENV"
