"""One llm-compressor run of `make bench-llm`: prune a Hugging Face causal LM with
`llmcompressor.oneshot` and measure its perplexity the way prune's report does.

    python llmcompressor_run.py --model DIR --tokens cal.safetensors --method wanda \
        --structure 2:4 --threads 2 --eval-text evaluation.txt --eval-seq-len 256

Methods:
  dense      no pruning; only the perplexity of the model as loaded.
  wanda      WandaPruningModifier  (llmcompressor 0.14: per output row, |W| * sqrt(sum x^2 / n)).
  sparsegpt  SparseGPTModifier     (block_size 128 and dampening_frac 0.01 by default, as prune).
  magnitude  NOT llm-compressor: its MagnitudePruningModifier is a training-time modifier (masks
             applied at optimizer steps, a sparsity schedule, no N:M structure), so oneshot has no
             magnitude pruning. This script prunes by magnitude in plain PyTorch instead, with
             prune's rules (per tensor keep count round-half-even(n * (1 - s)), ties to the lower
             index; 2:4 keeps the 2 largest |w| of every 4 consecutive inputs) and says
             "tool": "torch" in its output.

Calibration: the first `--samples` rows of `input_ids` [N, L] from `--tokens` (tokens.py), fed to
oneshot as a DataLoader of batch size 1 in file order (a DataLoader passes through oneshot
untouched; a `datasets.Dataset` would go through its sampler, which shuffles by default and
otherwise orders rows with an unstable argsort), with `pipeline="sequential"`: one decoder layer
at a time, its outputs recomputed with the pruned weights before the next layer.
Targets: every Linear inside the decoder layers (`re:model\\.layers\\.\\d+$` as the layers that
contain targets), `ignore=["re:.*lm_head"]`; embeddings and lm_head stay dense (checked).

Timing: wall clock of the `oneshot(...)` call alone (the model is loaded before it; nothing is
saved: no output_dir), with `torch.set_num_threads(--threads)`.

Perplexity: the evaluation text tokenized whole with the directory's tokenizer.json (`tokenizers`,
special tokens added: what prune's worker and transformers 4.57's `AutoTokenizer(text)` give), cut into consecutive non-overlapping windows of `--eval-seq-len` tokens (the tail
dropped; at most `--max-windows`, the first ones), each window scored on its own: mean NLL of
tokens 1..L-1 given those before them (labels = inputs shifted by one), over all windows, then
exp. The same definition as prune's `language_model.perplexity`.

Prints one JSON line: tool, method, structure, seconds, perplexity, windows, peak_rss_bytes
(VmHWM of this process right after pruning: model load included), the measured sparsity of the
decoder Linears and of lm_head, versions.
"""

import argparse
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

DECODER_LAYERS = r"re:model\.layers\.\d+$"

try:  # llmcompressor's loguru sink is stdout: move it to stderr, stdout is the JSON line
    import llmcompressor  # noqa: F401, E402
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="INFO")
except ImportError:  # dense and magnitude also run without it
    pass


def vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def encode(model_dir: str, text: str) -> list[int]:
    """The text's ids from the directory's tokenizer.json through the `tokenizers` library, special
    tokens added by its post-processor: what prune's worker does (the `tokenizers` crate) and what
    `AutoTokenizer(text)` gives under transformers 4.57. Not transformers 5's AutoTokenizer: on the
    SmolLM2 directory (tokenizer_class LlamaTokenizer) it rebuilds a different tokenizer (no BOS,
    other pieces: 9745 ids instead of 9366 for data/text/evaluation.txt)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).encode(text).ids


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import compressed_tensors
        import llmcompressor

        out["llmcompressor"] = llmcompressor.__version__
        out["compressed_tensors"] = compressed_tensors.__version__
    except ImportError:
        pass
    return out


def decoder_linears(model):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            yield name, module


def sparsity_of(tensors) -> float:
    zeros = total = 0
    for t in tensors:
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / total if total else 0.0


@torch.no_grad()
def perplexity(model, model_dir: str, text_path: str, seq_len: int, max_windows: int | None, batch: int):
    with open(text_path, encoding="utf-8") as f:
        ids = encode(model_dir, f.read())
    n = len(ids) // seq_len
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        sys.exit(f"{text_path}: {len(ids)} tokens, fewer than one window of {seq_len}")
    windows = torch.tensor(ids[: n * seq_len], dtype=torch.int64).view(n, seq_len)
    nll, count = 0.0, 0
    model.eval()
    for start in range(0, n, batch):
        x = windows[start : start + batch]
        logits = model(input_ids=x, use_cache=False).logits
        nll += F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += x.shape[0] * (seq_len - 1)
    return math.exp(nll / count), n, len(ids)


@torch.no_grad()
def magnitude_prune(model, sparsity: float, structure: str) -> None:
    """prune's magnitude rules, per decoder Linear weight (docs/pruning-semantics.md)."""
    for _, module in decoder_linears(model):
        w = module.weight.data
        if structure == "2:4":
            rows, cols = w.shape
            groups = w.abs().reshape(rows, cols // 4, 4)
            order = torch.sort(-groups, dim=-1, stable=True).indices  # largest first, ties: lower index
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :2], True)
            w.mul_(mask.reshape(rows, cols))
        else:
            flat = w.reshape(-1)
            n = flat.numel()
            keep = round(n * (1.0 - sparsity))  # Python's round: half to even, like prune's
            order = torch.sort(-flat.abs(), stable=True).indices
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order[:keep]] = True
            flat.mul_(mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", help="calibration input_ids [N, L] (tokens.py); not needed for dense/magnitude")
    ap.add_argument("--samples", type=int, help="use the first SAMPLES rows (default: all)")
    ap.add_argument("--method", required=True, choices=["dense", "magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--structure", default="50%", choices=["50%", "2:4", "dense"], help="50%% unstructured or 2:4")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--dampening", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--eval-text")
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--max-windows", type=int)
    ap.add_argument("--eval-batch", type=int, default=4, help="windows per forward pass (each scored alone)")
    ap.add_argument("--max-layers", type=int, help="development only: keep the first N decoder layers")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.max_layers:
        model.model.layers = model.model.layers[: args.max_layers]
        model.config.num_hidden_layers = args.max_layers
    model.eval()
    result = {
        "method": args.method,
        "structure": args.structure if args.method != "dense" else "dense",
        "threads": args.threads,
    }

    seconds = None
    if args.method == "magnitude":
        result["tool"] = "torch"
        t0 = time.perf_counter()
        magnitude_prune(model, args.sparsity, args.structure)
        seconds = time.perf_counter() - t0
    elif args.method in ("wanda", "sparsegpt"):
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
        from torch.utils.data import DataLoader

        result["tool"] = "llmcompressor"
        if not args.tokens:
            sys.exit("--tokens is required for wanda and sparsegpt")
        ids = load_file(args.tokens)["input_ids"].to(torch.int64)
        if args.samples:
            if ids.shape[0] < args.samples:
                sys.exit(f"{args.tokens}: {ids.shape[0]} rows, fewer than --samples {args.samples}")
            ids = ids[: args.samples]
        samples, seq_len = ids.shape
        result.update(samples=samples, seq_len=seq_len)
        loader = DataLoader(
            [{"input_ids": row} for row in ids],
            batch_size=1,
            shuffle=False,
            collate_fn=lambda batch: {"input_ids": torch.stack([b["input_ids"] for b in batch])},
        )
        common = dict(
            sparsity=args.sparsity,
            mask_structure="2:4" if args.structure == "2:4" else "0:0",
            targets=[DECODER_LAYERS],
            ignore=["re:.*lm_head"],
        )
        if args.method == "wanda":
            modifier = WandaPruningModifier(**common)
        else:
            modifier = SparseGPTModifier(**common, block_size=args.block_size, dampening_frac=args.dampening)
            result.update(block_size=args.block_size, dampening=args.dampening)
        t0 = time.perf_counter()
        oneshot(
            model=model,
            tokenizer=tokenizer,
            recipe=[modifier],
            dataset=loader,
            pipeline="sequential",
            batch_size=1,
            num_calibration_samples=samples,
            max_seq_length=seq_len,
            shuffle_calibration_samples=False,
        )
        seconds = time.perf_counter() - t0
    else:
        result["tool"] = "transformers"
    result["seconds"] = seconds
    result["peak_rss_bytes"] = vm_hwm_bytes()

    linears = list(decoder_linears(model))
    result["decoder_linears"] = len(linears)
    result["decoder_linear_sparsity"] = round(sparsity_of(m.weight.data for _, m in linears), 6)
    result["lm_head_sparsity"] = round(sparsity_of([model.get_output_embeddings().weight.data]), 6)

    if args.eval_text:
        t0 = time.perf_counter()
        ppl, windows, tokens = perplexity(
            model, args.model, args.eval_text, args.eval_seq_len, args.max_windows, args.eval_batch
        )
        result.update(
            perplexity=ppl,
            eval_seq_len=args.eval_seq_len,
            windows=windows,
            eval_text_tokens=tokens,
            eval_seconds=round(time.perf_counter() - t0, 3),
        )
    result["versions"] = versions()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
