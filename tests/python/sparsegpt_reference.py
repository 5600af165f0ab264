"""SparseGPT as IST-DASLab/sparsegpt implements it: the baseline prune's SparseGPT must equal.

A short transcription (not a copy) of IST-DASLab/sparsegpt, commit 147d2159dc4f3e9f73e47b32c04d7b3708f44436:
  * sparsegpt.py, SparseGPT.add_batch: the running-average Hessian 2/n * X X^T (n = windows);
  * sparsegpt.py, SparseGPT.fasterprune: dead inputs, damping, the upper Cholesky factor of the
    inverse, blocks with masks chosen per block, column-by-column error propagation, lazy updates
    (the quantizer and the loss bookkeeping left out: neither changes the weights);
  * llama.py, llama_sequential (true_sequential off, its default): the layer-by-layer pass, shared
    with wanda_reference.py's sequential_pass.

Deliberate differences, all shared with engine/src/llm/sparsegpt.rs:
  * N:M ties: torch.topk(largest=False) is replaced by a stable sort pruning the lower column
    first; `topk_disagreements` counts the groups where topk chose another set (see
    wanda_reference.py).
  * A Cholesky failure after damping falls back to an identity inverse, as llm-compressor does
    (the reference raises); a non-finite inverse counts as a failure.

Usage:
  python sparsegpt_reference.py linear IN.safetensors OUT.safetensors (--sparsity S | --nm N M)
          [--blocksize 128] [--percdamp 0.01]
      IN: `weight` [out, in] f32 and `x` [windows, L, in] f32, fed one window at a time.
      OUT: `hessian` [in, in], `kept` [out, in] u8 (1 = kept), `weight` (pruned),
      `fallback` [1] u8 (1: identity inverse used), `topk_disagreements` [1] i64.
  python sparsegpt_reference.py model MODEL_DIR TOKENS.safetensors OUT.safetensors (--sparsity S | --nm N M)
      The whole sequential pass (see wanda_reference.py); OUT is the pruned state dict.
"""

import math

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wanda_reference import load_llama, lowest_n, parse, save_state_dict, sequential_pass


class SparseGPT:
    """sparsegpt.py's SparseGPT for an nn.Linear."""

    def __init__(self, layer):
        self.layer = layer
        self.columns = layer.weight.data.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=layer.weight.device)
        self.nsamples = 0
        self.fallback = False

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01, counter=None):
        """Returns the mask (True = pruned) and writes the new weight into the layer."""
        counter = counter if counter is not None else [0]
        W = self.layer.weight.data.clone().float()
        H = self.H.clone()  # the reference consumes self.H; the test also wants it back
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        # llm-compressor's fallback around the reference's three lines.
        try:
            damp = percdamp * torch.mean(torch.diag(H))
            diag = torch.arange(self.columns, device=H.device)
            H[diag, diag] += damp
            H = torch.linalg.cholesky(H)
            H = torch.cholesky_inverse(H)
            if not torch.isfinite(H).all():
                raise torch.linalg.LinAlgError("the inverse is not finite")
            H = torch.linalg.cholesky(H, upper=True)
            Hinv = H
        except torch.linalg.LinAlgError:
            self.fallback = True
            Hinv = torch.eye(self.columns, device=H.device)

        full_mask = torch.zeros_like(W, dtype=torch.bool)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + lowest_n(tmp, prunen, counter), True)

                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            full_mask[:, i1:i2] = mask1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        return full_mask


def main():
    import argparse
    import sys

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--blocksize", type=int, default=128)
    extra.add_argument("--percdamp", type=float, default=0.01)
    known, rest = extra.parse_known_args(sys.argv[1:])
    args = parse(rest)
    counter, fallbacks = [0], []

    def prune(name, linear, gpt):
        sparsity = args.sparsity if args.sparsity is not None else 0.0
        mask = gpt.fasterprune(sparsity, args.prune_n, args.prune_m, known.blocksize, known.percdamp, counter)
        if gpt.fallback:
            fallbacks.append(name)
        return mask

    if args.command == "linear":
        tensors = load_file(args.input)
        weight = tensors["weight"].float()
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight.data = weight.clone()
        gpt = SparseGPT(layer)
        for j in range(tensors["x"].shape[0]):
            gpt.add_batch(tensors["x"][j].unsqueeze(0), None)
        mask = prune("linear", layer, gpt)
        save_file({
            "hessian": gpt.H,
            "kept": (~mask).to(torch.uint8),
            "weight": layer.weight.data.contiguous(),
            "fallback": torch.tensor([int(gpt.fallback)], dtype=torch.uint8),
            "topk_disagreements": torch.tensor([counter[0]], dtype=torch.int64),
        }, args.output)
    else:
        model = load_llama(args.model_dir)
        input_ids = load_file(args.tokens)["input_ids"].long()
        errors = sequential_pass(model, input_ids, SparseGPT, prune, only=args.only)
        save_state_dict(model, args.output, errors)
    print(f"topk_disagreements {counter[0]} fallbacks {fallbacks}")


if __name__ == "__main__":
    main()
