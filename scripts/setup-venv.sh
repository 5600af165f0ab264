#!/usr/bin/env bash
# Creates (once) the cached Python virtualenv that provides libtorch 2.13.0 for tch 0.26,
# plus the few Python packages the tests use: plain PyTorch checks of artifacts, compressed-tensors
# (it must read our packed sharded checkpoints), and a grpcio
# client (grpcio-tools to generate stubs from proto/, grpcio-status for the error details) that
# drives the API as an outside user would.
# Idempotent: each completed step is marked with a stamp file and reused by later runs and CI.
set -euo pipefail
VENV="${PRUNE_VENV:-$HOME/.cache/prune/venv-torch-2.13.0}"
STAMP="$VENV/.prune-ready-v1"
GRPC_STAMP="$VENV/.prune-grpc-v1"
CT_STAMP="$VENV/.prune-compressed-tensors-v1"
HF_STAMP="$VENV/.prune-transformers-v1"
# No pip cache: the wheels (torch's CUDA libraries among them) would take as much disk again.
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir)
if [ ! -f "$STAMP" ]; then
  PY="${PYTHON:-python3}"
  echo "setting up $VENV (torch 2.13.0 from PyPI, a few GB, once)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "${PIP[@]}" --upgrade pip >&2
  "${PIP[@]}" torch==2.13.0 safetensors numpy >&2
  "$VENV/bin/python" -c 'import torch, safetensors; assert torch.__version__.startswith("2.13.0"), torch.__version__' >&2
  touch "$STAMP"
fi
if [ ! -f "$GRPC_STAMP" ]; then
  echo "adding grpcio, grpcio-tools and grpcio-status to $VENV (once)" >&2
  "${PIP[@]}" grpcio==1.85.3 grpcio-tools==1.85.1 grpcio-status==1.85.3 >&2 \
    || "${PIP[@]}" grpcio grpcio-tools grpcio-status >&2
  "$VENV/bin/python" -c 'import grpc, grpc_tools, grpc_status; from google.rpc import error_details_pb2' >&2
  touch "$GRPC_STAMP"
fi
# compressed-tensors 0.14.0.1: the last release with sparsity compressors (0.15 dropped them);
# the sharded-checkpoint test decompresses our packed directories with its ModelCompressor.
# It imports psutil without declaring it.
if [ ! -f "$CT_STAMP" ]; then
  echo "adding compressed-tensors 0.14.0.1 to $VENV (once)" >&2
  "${PIP[@]}" compressed-tensors==0.14.0.1 psutil >&2
  "$VENV/bin/python" -c 'import torch, compressed_tensors; from compressed_tensors.compressors import ModelCompressor; assert torch.__version__.startswith("2.13.0"), torch.__version__' >&2
  touch "$CT_STAMP"
fi
# transformers 4.57 (+ tokenizers, gguf, accelerate): the reference the Llama-family decoder's
# logits and tokenizer ids are checked against (tests/python/llama_reference.py), and what
# dequantizes SmolLM2's GGUF file (scripts/setup-smollm2.sh). Hugging Face Hub is never reached.
if [ ! -f "$HF_STAMP" ]; then
  echo "adding transformers 4.57, tokenizers, gguf and accelerate to $VENV (once)" >&2
  "${PIP[@]}" 'transformers==4.57.*' 'tokenizers==0.22.*' 'gguf==0.19.*' 'accelerate==1.16.*' >&2
  HF_HUB_OFFLINE=1 "$VENV/bin/python" -c 'import torch, transformers, tokenizers, gguf, accelerate; assert transformers.__version__.startswith("4.57."), transformers.__version__; assert torch.__version__.startswith("2.13.0"), torch.__version__' >&2
  touch "$HF_STAMP"
fi
echo "$VENV"
