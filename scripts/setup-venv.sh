#!/usr/bin/env bash
# Creates (once) the cached Python virtualenv that provides libtorch 2.13.0 for tch 0.26,
# plus the few Python packages the tests use to check artifacts with plain PyTorch.
# Idempotent: a completed venv is marked with a stamp file and reused by later runs and CI.
set -euo pipefail
VENV="${PRUNE_VENV:-$HOME/.cache/prune/venv-torch-2.13.0}"
STAMP="$VENV/.prune-ready-v1"
if [ -f "$STAMP" ]; then
  echo "$VENV"
  exit 0
fi
PY="${PYTHON:-python3}"
echo "setting up $VENV (torch 2.13.0 from PyPI, a few GB, once)" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  torch==2.13.0 safetensors numpy >&2
"$VENV/bin/python" -c 'import torch, safetensors; assert torch.__version__.startswith("2.13.0"), torch.__version__' >&2
touch "$STAMP"
echo "$VENV"
