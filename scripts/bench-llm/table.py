"""The table of `make bench-llm` from the JSON lines run.sh collected.

    python table.py prune.jsonl llmc.jsonl

Columns: method, structure, prune ppl, llmc ppl (llm-compressor oneshot; `torch` marks the
plain-PyTorch magnitude reference, `hf` the dense model in transformers), ppl ratio (prune / llmc),
prune s (language_model.prune_seconds: the layer-by-layer pass), llmc s (the oneshot call alone),
time ratio (prune s / llmc s), prune wall s (the job from `prunectl submit` to SUCCEEDED, uploads
beforehand, dense and pruned evaluation and export included), llmc process s (the whole
llmcompressor_run.py process: imports, model load, oneshot, the pruned model's evaluation), the peak resident memory of each
(prune: the worker's VmHWM; llmc: its process's VmHWM right after pruning, model load included),
and whether the issue's goals hold (perplexity at most 2% above llm-compressor's, time at most
0.8x), for the rows where llm-compressor ran. A missing side prints as "-".
"""

import json
import sys


def load(path):
    rows = {}
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows[(r["method"], r["structure"])] = r
    except FileNotFoundError:
        pass
    return rows


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def gib(b):
    return None if b is None else b / 2**30


def main():
    prune, llmc = load(sys.argv[1]), load(sys.argv[2])
    header = ["method", "structure", "prune ppl", "llmc ppl", "ppl ratio", "prune s", "llmc s", "time ratio",
              "prune wall s", "llmc process s", "prune peak GiB", "llmc peak GiB", "goals"]
    lines = []
    dense_prune = next((r["dense_perplexity"] for r in prune.values() if r.get("dense_perplexity")), None)
    dense_ref = llmc.get(("dense", "dense"))
    if dense_prune is not None or dense_ref:
        ref = dense_ref and dense_ref.get("perplexity")
        lines.append(["dense", "-", fmt(dense_prune, ".3f"), fmt(ref, ".3f") + (" (hf)" if ref else ""),
                      fmt(dense_prune / ref if dense_prune and ref else None, ".4f"), "-", "-", "-", "-",
                      fmt(dense_ref and dense_ref.get("process_seconds"), ".1f"), "-",
                      fmt(gib(dense_ref and dense_ref.get("peak_rss_bytes")), ".2f"), ""])
    keys = [k for k in list(prune) + list(llmc) if k[0] != "dense"]
    order = {"magnitude": 0, "wanda": 1, "sparsegpt": 2}
    for key in sorted(dict.fromkeys(keys), key=lambda k: (k[1] != "50%", order.get(k[0], 9))):
        p, l = prune.get(key), llmc.get(key)
        pp, lp = p and p.get("perplexity"), l and l.get("perplexity")
        ps, ls = p and p.get("seconds"), l and l.get("seconds")
        tool = l and l.get("tool")
        ppl_ratio = pp / lp if pp and lp else None
        time_ratio = ps / ls if ps and ls and tool == "llmcompressor" else None
        goals = ""
        if tool == "llmcompressor" and ppl_ratio and time_ratio:
            goals = ("ppl ok" if ppl_ratio <= 1.02 else "ppl MISS") + ", " + ("time ok" if time_ratio <= 0.8 else "time MISS")
        lines.append([key[0], key[1], fmt(pp, ".3f"), fmt(lp, ".3f") + (f" ({tool})" if lp and tool != "llmcompressor" else ""),
                      fmt(ppl_ratio, ".4f"), fmt(ps, ".2f"), fmt(ls, ".2f") if tool == "llmcompressor" else "-",
                      fmt(time_ratio, ".2f"), fmt(p and p.get("wall_seconds"), ".1f"),
                      fmt(l and l.get("process_seconds"), ".1f"),
                      fmt(gib(p and p.get("peak_rss_bytes")), ".2f"), fmt(gib(l and l.get("peak_rss_bytes")), ".2f"), goals])
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    versions = next((r["versions"] for r in llmc.values() if r.get("tool") == "llmcompressor"), None) or \
        next((r["versions"] for r in llmc.values()), None)
    if versions:
        print("reference side: " + ", ".join(f"{k} {v}" for k, v in versions.items()))


if __name__ == "__main__":
    main()
