"""Writes the calibration tokens that `make bench-llm` gives both prune and llm-compressor.

    python tokens.py MODEL_DIR TEXT OUT.safetensors SAMPLES SEQ_LEN [SEED]

The text is tokenized whole by the model's tokenizer.json through the `tokenizers` library (special
tokens added by its post-processor: what prune's worker does, and what transformers 4.57's
`AutoTokenizer(text)` gives; transformers 5 rebuilds a different tokenizer for SmolLM2), then
SAMPLES windows of SEQ_LEN consecutive tokens are drawn the way locuslab/wanda's and
IST-DASLab/sparsegpt's `get_wikitext2` draw them: `random.seed(seed)`, then per window
`i = random.randint(0, n - seq_len - 1)`. Written as one int64 tensor `input_ids`
[SAMPLES, SEQ_LEN]: prune reads it with `[calibration] tokens = ...` (rows in order),
llmcompressor_run.py feeds the same rows in the same order to `oneshot`.
Prints one JSON line (shape, text tokens, sha256 of the tensor's bytes).
"""

import hashlib
import json
import os
import random
import sys

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main() -> None:
    model_dir, text_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    samples, seq_len = int(sys.argv[4]), int(sys.argv[5])
    seed = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    with open(text_path, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read()).ids
    n = len(ids)
    if n < seq_len + 1:
        sys.exit(f"{text_path}: {n} tokens, fewer than one window of {seq_len} + 1")
    random.seed(seed)
    rows = []
    for _ in range(samples):
        i = random.randint(0, n - seq_len - 1)
        rows.append(ids[i : i + seq_len])
    input_ids = torch.tensor(rows, dtype=torch.int64)
    save_file({"input_ids": input_ids.contiguous()}, out)
    digest = hashlib.sha256(input_ids.numpy().tobytes()).hexdigest()
    print(json.dumps({"file": out, "shape": list(input_ids.shape), "text_tokens": n, "seed": seed, "sha256": digest}))


if __name__ == "__main__":
    main()
