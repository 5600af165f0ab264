"""Wanda as locuslab/wanda implements it: the baseline prune's Wanda (engine/src/llm) must equal.

A short transcription (not a copy) of locuslab/wanda, commit 8e8fc87b4a2f9955baa7e76e64d5fce7fa8724a6:
  * lib/layerwrapper.py, WrappedGPT.add_batch: the running mean of per-column squared norms;
  * lib/prune.py, prune_wanda: the metric |W| * sqrt(scaler_row), the per-row stable sort
    (unstructured) or the per-group lowest-n (N:M), and the sequential pass over decoder layers
    (capture layer 0's inputs; per layer: hooks on every Linear over every window, prune, run
    the layer again with its pruned weights to get the next layer's inputs).

One deliberate difference: for N:M the reference picks the n lowest scores of a group with
torch.topk(largest=False), whose order among equal scores is unspecified. Here a stable sort
prunes the lower column first among ties (prune's documented rule); every N:M selection also
runs torch.topk and counts the groups where it chose a different set (`topk_disagreements`),
which is 0 unless a tie straddles the n-th lowest score.

Usage:
  python wanda_reference.py linear IN.safetensors OUT.safetensors (--sparsity S | --nm N M)
      IN: `weight` [out, in] f32 and `x` [windows, L, in] f32, the calibration inputs of one
      Linear, fed one window at a time like prune_wanda. OUT: `scaler_row` [in] f32, `kept`
      [out, in] u8 (1 = kept), `weight` (pruned), `topk_disagreements` [1] i64.
  python wanda_reference.py model MODEL_DIR TOKENS.safetensors OUT.safetensors (--sparsity S | --nm N M)
      A Hugging Face Llama-family directory and `input_ids` [windows, L] int64: the whole
      sequential pass in f32; OUT is the pruned state dict, with each pruned weight's relative
      reconstruction error as `reconstruction_error.NAME`. Needs transformers (imported only here).
"""

import argparse
import re

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class WrappedGPT:
    """lib/layerwrapper.py: the per-column statistic of one Linear's input."""

    def __init__(self, layer):
        self.layer = layer
        self.columns = layer.weight.data.shape[1]
        self.scaler_row = torch.zeros((self.columns), device=layer.weight.device)
        self.nsamples = 0

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def lowest_n(scores, n, counter):
    """The n lowest scores per row, ties to the lower column (see the module docstring); counts
    the rows where torch.topk(largest=False) would have chosen another set."""
    ours = torch.sort(scores, dim=1, stable=True)[1][:, :n]
    theirs = torch.topk(scores, n, dim=1, largest=False)[1]
    a = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, ours, True)
    b = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, theirs, True)
    counter[0] += int((a != b).any(dim=1).sum())
    return ours


def wanda_prune_linear(layer, wrapped, sparsity, prune_n=0, prune_m=0, counter=None):
    """lib/prune.py prune_wanda, the body of `for name in subset`: returns W_mask (True = pruned)
    and zeroes those weights in place."""
    counter = counter if counter is not None else [0]
    W_metric = torch.abs(layer.weight.data) * torch.sqrt(wrapped.scaler_row.reshape((1, -1)))
    W_mask = torch.zeros_like(W_metric) == 1
    if prune_n != 0:
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:, ii:(ii + prune_m)].float()
                W_mask.scatter_(1, ii + lowest_n(tmp, prune_n, counter), True)
    else:
        sort_res = torch.sort(W_metric, dim=-1, stable=True)
        indices = sort_res[1][:, :int(W_metric.shape[1] * sparsity)]
        W_mask.scatter_(1, indices, True)
    layer.weight.data[W_mask] = 0
    return W_mask


def find_layers(module, name=""):
    """lib/prune.py find_layers: every nn.Linear below `module`, by dotted name."""
    if type(module) is nn.Linear:
        return {name: module}
    found = {}
    for child_name, child in module.named_children():
        found.update(find_layers(child, name + "." + child_name if name else child_name))
    return found


@torch.no_grad()
def sequential_pass(model, input_ids, make_wrapper, prune, only=None):
    """prune_wanda's (and sparsegpt llama.py llama_sequential's) layer-by-layer structure, for a
    transformers Llama-family model in f32 and `input_ids` [windows, L], one window at a time.
    `make_wrapper(linear)` returns an object with add_batch(inp, out); `prune(name, linear,
    wrapper)` prunes the Linear in place. Returns each pruned weight's relative reconstruction
    error ||W X - Ŵ X||² / ||W X||² on its calibration inputs X, computed directly in f64 (what
    prune's report must say; not part of the references). `only`: a regex; only the Linears
    whose name in the layer (e.g. `mlp.up_proj`) it matches are pruned (prune's `include`)."""
    errors = {}
    model.config.use_cache = False
    layers = model.model.layers
    inps, captured = [], {}

    # The references swap layer 0 for a Catcher module; a pre-hook captures the same (hidden
    # states plus the mask and rotary data the layer is called with) without hiding the layer's
    # attributes that newer transformers read (e.g. attention_type).
    def catch(_, args, kwargs):
        inps.append(args[0] if args else kwargs.pop("hidden_states"))
        captured["args"], captured["kwargs"] = args[1:], kwargs
        raise ValueError

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    for j in range(input_ids.shape[0]):
        try:
            model(input_ids[j:j + 1], use_cache=False)
        except ValueError:
            pass
    handle.remove()
    args, kwargs = captured["args"], captured["kwargs"]

    def run(layer, hidden):
        out = layer(hidden, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    for i, layer in enumerate(layers):
        subset = {n: m for n, m in find_layers(layer).items() if only is None or re.search(only, n)}
        wrappers = {name: make_wrapper(subset[name]) for name in subset}

        inputs = {name: [] for name in subset}

        def add_batch(name):
            def hook(_, inp, out):
                wrappers[name].add_batch(inp[0].data, out.data)
                inputs[name].append(inp[0].data.clone())
            return hook

        handles = [subset[name].register_forward_hook(add_batch(name)) for name in subset]
        for j in range(len(inps)):
            run(layer, inps[j])
        for h in handles:
            h.remove()
        for name in subset:
            dense = subset[name].weight.data.clone()
            prune(f"model.layers.{i}.{name}", subset[name], wrappers[name])
            errors[f"model.layers.{i}.{name}.weight"] = relative_error(dense, subset[name].weight.data, inputs[name])
        inps = [run(layer, inps[j]) for j in range(len(inps))]
    return errors


def relative_error(dense, pruned, inputs):
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs]).double()
    wx = x @ dense.double().t()
    return float(((wx - x @ pruned.double().t()) ** 2).sum() / (wx ** 2).sum())


def load_llama(model_dir):
    from transformers import AutoModelForCausalLM  # only the model-level pass needs it

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()


def save_state_dict(model, path, errors=None):
    """The pruned state dict, plus `reconstruction_error.NAME` (f64 scalars) from `errors`."""
    # Tied embeddings share storage, which save_file refuses: write independent copies.
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for name, error in (errors or {}).items():
        tensors[f"reconstruction_error.{name}"] = torch.tensor(error, dtype=torch.float64)
    save_file(tensors, path)


def pattern_args(parser):
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sparsity", type=float)
    group.add_argument("--nm", type=int, nargs=2, metavar=("N", "M"), help="prune N of every M")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", help="model: prune only the Linears whose name in the layer matches")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    linear = sub.add_parser("linear")
    linear.add_argument("input")
    linear.add_argument("output")
    pattern_args(linear)
    model = sub.add_parser("model")
    model.add_argument("model_dir")
    model.add_argument("tokens")
    model.add_argument("output")
    pattern_args(model)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.prune_n, args.prune_m = args.nm if args.nm else (0, 0)
    return args


def main():
    args = parse()
    counter = [0]
    if args.command == "linear":
        tensors = load_file(args.input)
        weight = tensors["weight"].float()
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight.data = weight.clone()
        wrapped = WrappedGPT(layer)
        for j in range(tensors["x"].shape[0]):
            wrapped.add_batch(tensors["x"][j].unsqueeze(0), None)
        W_mask = wanda_prune_linear(layer, wrapped, args.sparsity, args.prune_n, args.prune_m, counter)
        save_file({
            "scaler_row": wrapped.scaler_row,
            "kept": (~W_mask).to(torch.uint8),
            "weight": layer.weight.data.contiguous(),
            "topk_disagreements": torch.tensor([counter[0]], dtype=torch.int64),
        }, args.output)
    else:
        model = load_llama(args.model_dir)
        input_ids = load_file(args.tokens)["input_ids"].long()
        errors = sequential_pass(
            model, input_ids, WrappedGPT,
            lambda name, linear, wrapped: wanda_prune_linear(
                linear, wrapped, args.sparsity, args.prune_n, args.prune_m, counter),
            only=args.only,
        )
        save_state_dict(model, args.output, errors)
    print(f"topk_disagreements {counter[0]}")


if __name__ == "__main__":
    main()
