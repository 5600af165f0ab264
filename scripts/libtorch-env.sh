#!/usr/bin/env bash
# Prints `export` lines that point tch at the cached venv's libtorch. Usage: eval "$(scripts/libtorch-env.sh)"
set -euo pipefail
VENV=$("$(dirname "$0")/setup-venv.sh")
TORCH=$(ls -d "$VENV"/lib/python3*/site-packages/torch | head -n1)
echo "export PRUNE_VENV='$VENV'"
echo "export LIBTORCH='$TORCH'"
echo "export LIBTORCH_CXX11_ABI=1"
