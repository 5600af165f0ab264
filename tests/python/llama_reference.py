"""transformers' logits, perplexities and token ids, the reference the engine's Llama-family
decoder is checked against (engine/tests/llm_model.rs). Never reaches Hugging Face Hub.

    llama_reference.py tiny OUT_DIR
        Tiny random models, one directory each under OUT_DIR (config.json, weights, tokenizer):
        `llama` (GQA, llama3 RoPE scaling, tied embeddings, f32 model.safetensors),
        `mistral` (sliding window longer than the sequences, bf16 weights),
        `qwen2` (q/k/v biases, untied lm_head, sharded: an index and several shards);
        each with reference.safetensors and tokens.json next to the model files.
    llama_reference.py model MODEL_DIR OUT_DIR
        The same reference for an existing model directory (SmolLM2).

reference.safetensors: `ids` [2, L] int64 and their f32 `logits` [2, L, vocab]; `stream`, a
token stream (random tokens for the tiny models, an English text for an existing model), and `nll` (f64 [1], summed) / `count` (int64 [1]) over its non-overlapping
`seq_len`-token windows (tail dropped, each window scored on its own), which is the engine's
perplexity definition; `input.{layer}.{site}`, what the Linears of each site (attention,
attention_output, mlp, mlp_output) multiply for `ids`. tokens.json: {"texts": [...], "ids": [[...], ...], "seq_len": L}.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

TEXTS = [
    "Hello world, this is a test.",
    "  Leading spaces,\ttabs\nand new lines\n\n  twice.",
    "Numbers 12345 and 3.14159; symbols #@!$%^&*() and unicode: café, naïve, 東京, 🙂.",
    "The quick brown fox jumps over the lazy dog. " * 3,
]
# Written for these tests (no licence to track).
ENGLISH = (
    "The river runs past the old mill, where the children used to fish on summer afternoons. "
    "In the evening the light turns gold over the water, and the farmers walk home along the bank. "
    "Nobody remembers who built the mill, but everyone in the village knows its story: a miller "
    "who gave away his flour in the hard winter, and was paid back in spring with seeds and work. "
    "Today the wheel no longer turns, yet people still stop on the bridge to listen to the water."
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a language model predicts the next token from the ones before it",
    "pruning removes weights; perplexity says how much the model lost",
    "numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ?",
] * 20


def tiny_tokenizer(vocab_size):
    """A byte-level BPE trained here (deterministic), BOS added like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def randomize(model):
    """Random values everywhere, norms and biases included (their defaults, ones and zeros, would
    hide a weight read wrongly)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.15 * noise)


def tiny_configs():
    common = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
    )
    llama = LlamaConfig(
        **common,
        num_hidden_layers=3,
        num_key_value_heads=2,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            # Small, so the band llama3 interpolates falls among a head_dim of 16's frequencies.
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=True,
    )
    mistral = MistralConfig(**common, num_hidden_layers=2, num_key_value_heads=1, sliding_window=64)
    qwen2 = Qwen2Config(**common, num_hidden_layers=2, num_key_value_heads=2, rope_theta=10000.0)
    # Saved as: f32 single file, bf16 single file, f32 in shards.
    return [("llama", llama, torch.float32, None), ("mistral", mistral, torch.bfloat16, None), ("qwen2", qwen2, torch.float32, "40KB")]


def random_tokens(vocab, seq_len, stream_len):
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, vocab, (2, seq_len), generator=g), torch.randint(0, vocab, (stream_len,), generator=g)


def reference(model, tokenizer, out, ids, stream):
    seq_len, stream_len = ids.shape[1], stream.shape[0]
    nll, count = 0.0, 0
    # What each site's first Linear multiplies, layer by layer (the engine's `observe`).
    inputs, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        for site, module in [("attention", layer.self_attn.q_proj), ("attention_output", layer.self_attn.o_proj),
                             ("mlp", layer.mlp.gate_proj), ("mlp_output", layer.mlp.down_proj)]:
            def hook(_module, args, key=f"input.{i}.{site}"):
                inputs[key] = args[0].detach().float().contiguous()
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        logits = model(ids).logits.float()
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for w in stream[: stream_len // seq_len * seq_len].view(-1, seq_len):
            lg = model(w[None]).logits.float()[0, :-1]
            nll += torch.nn.functional.cross_entropy(lg, w[1:], reduction="sum").double().item()
            count += seq_len - 1
    save_file(
        {
            "ids": ids.clone(),
            "logits": logits.contiguous(),
            "stream": stream.clone(),
            "nll": torch.tensor([nll], dtype=torch.float64),
            "count": torch.tensor([count], dtype=torch.int64),
            **inputs,
        },
        str(out / "reference.safetensors"),
    )
    texts = TEXTS
    (out / "tokens.json").write_text(
        json.dumps({"texts": texts, "ids": [tokenizer(t)["input_ids"] for t in texts], "seq_len": seq_len})
    )


def tiny(out_dir):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(320)
    for name, config, dtype, shard in tiny_configs():
        out = out_dir / name
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        randomize(model)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.to(dtype).save_pretrained(out, safe_serialization=True, **kwargs)
        tokenizer.save_pretrained(out)
        # The reference is the saved directory loaded back in f32, as a user would load it
        # (casting the model in place would also round its RoPE inv_freq buffer to bf16).
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        ids, stream = random_tokens(config.vocab_size, seq_len=24, stream_len=24 * 5 + 7)
        reference(model, AutoTokenizer.from_pretrained(out), out, ids, stream)


def existing(model_dir, out):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Real text, so the perplexity means something: the stream is ENGLISH's tokens (BOS first),
    # `ids` its first two windows.
    stream = torch.tensor(tokenizer(ENGLISH)["input_ids"])
    seq_len = 32
    reference(model, tokenizer, out, stream[: 2 * seq_len].view(2, seq_len), stream)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "tiny":
        tiny(pathlib.Path(sys.argv[2]))
    elif sys.argv[1] == "model":
        existing(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
