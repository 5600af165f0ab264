#!/usr/bin/env bash
# Creates (once) the cached virtualenv that `make bench-vs-tfmot` times tfmot in: TensorFlow CPU,
# tf-keras (tfmot 0.8.1 needs Keras 2) and tensorflow-model-optimization 0.8.1 — the version the
# golden masks in tests/golden/ come from. Separate from the libtorch venv so that neither
# framework's wheels constrain the other's. Prints the venv's path.
set -euo pipefail
VENV="${PRUNE_TFMOT_VENV:-$HOME/.cache/prune/venv-tfmot-0.8.1}"
STAMP="$VENV/.prune-ready-v1"
if [ ! -f "$STAMP" ]; then
  PY="${PYTHON:-python3}"
  echo "setting up $VENV (tensorflow-cpu, tf-keras, tfmot 0.8.1 from PyPI, once)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir)
  "${PIP[@]}" --upgrade pip >&2
  "${PIP[@]}" tensorflow-cpu==2.18.1 tf-keras==2.18.0 tensorflow-model-optimization==0.8.1 safetensors numpy >&2
  TF_USE_LEGACY_KERAS=1 "$VENV/bin/python" -c 'import tensorflow_model_optimization as t, tf_keras; print(t.__version__)' >&2
  touch "$STAMP"
fi
echo "$VENV"
