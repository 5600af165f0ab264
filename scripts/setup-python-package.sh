#!/usr/bin/env bash
# Adds (once) what the `prune` Python package's build and tests need to the project venv that
# scripts/setup-venv.sh creates (torch 2.13.0): maturin (builds the abi3 wheel from python/),
# pytest, transformers (the Trainer callback; the version scripts/setup-venv.sh's other users
# pin) and pytorch-lightning (the Lightning callback). Prints the venv's path, like setup-venv.sh.
# Idempotent: each completed step is marked with a stamp file in the venv.
set -euo pipefail
VENV=$("$(dirname "$0")/setup-venv.sh")
BUILD_STAMP="$VENV/.prune-python-build-v1"
HF_STAMP="$VENV/.prune-python-transformers-v1"
PL_STAMP="$VENV/.prune-python-lightning-v1"
# No pip cache: see setup-venv.sh (the disk a fresh machine has).
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir)
PY="$VENV/bin/python"
if [ ! -f "$BUILD_STAMP" ]; then
  echo "adding maturin and pytest to $VENV (once)" >&2
  "${PIP[@]}" maturin==1.16.0 pytest==9.2.0 >&2
  "$PY" -c 'import pytest' >&2 && "$VENV/bin/maturin" --version >&2
  touch "$BUILD_STAMP"
fi
if [ ! -f "$HF_STAMP" ]; then
  # Another setup step may already have installed it: keep that one (same series).
  if ! "$PY" -c 'import transformers, sys; sys.exit(not transformers.__version__.startswith("4.57."))' 2>/dev/null; then
    echo "adding transformers 4.57 to $VENV (once)" >&2
    "${PIP[@]}" 'transformers==4.57.*' >&2
  fi
  "$PY" -c 'import transformers; from transformers import TrainerCallback' >&2
  touch "$HF_STAMP"
fi
if [ ! -f "$PL_STAMP" ]; then
  echo "adding pytorch-lightning 2.6.6 to $VENV (once)" >&2
  "${PIP[@]}" pytorch-lightning==2.6.6 >&2
  "$PY" -c 'import torch, pytorch_lightning; assert torch.__version__.startswith("2.13.0"), torch.__version__' >&2
  touch "$PL_STAMP"
fi
echo "$VENV"
