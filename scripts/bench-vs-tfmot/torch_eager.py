"""PyTorch eager's side of `make bench-vs-tfmot`: the seed job as the hand-written pruning loop a
PyTorch user would otherwise write (tfmot's schedule and exact-k magnitude masks, `w *= mask`
before every step, validation each epoch), timed from the first step to the last validation.
Threads: PyTorch's default (all cores), or argv[4]; device: $DEVICE (default cpu; `make gpu-check`
runs it on cuda). Prints one JSON line."""
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

data = load_file(sys.argv[1])
epochs, batch = int(sys.argv[2]), int(sys.argv[3])
if len(sys.argv) > 4:
    torch.set_num_threads(int(sys.argv[4]))
device = torch.device(os.environ.get("DEVICE", "cpu"))
x, y = data["x"].to(device), data["y"].to(device)
train_n = int(len(x) * 0.9)
xt, yt, xv, yv = x[:train_n], y[:train_n], x[train_n:], y[train_n:]
steps_per_epoch = -(-train_n // batch)
end = epochs * steps_per_epoch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 12, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(2028, 10)).to(device)
weights = [model[0].weight, model[4].weight]
masks = [torch.ones_like(w) for w in weights]
opt = torch.optim.Adam(model.parameters(), lr=1e-3)


def sparsity(step):  # tfmot PolynomialDecay 0.5 -> 0.8, power 3, begin 0, end `end`
    p = min(max(step, 0), end) / end
    return 0.8 + (0.5 - 0.8) * (1 - p) ** 3


def update_masks(step):
    with torch.no_grad():
        for w, m in zip(weights, masks):
            k = max(round((1 - sparsity(step)) * w.numel()), 1)
            keep = w.abs().flatten().topk(k).indices
            m.zero_().view(-1)[keep] = 1


start = time.perf_counter()
step = 0
for epoch in range(epochs):
    order = torch.randperm(train_n, device=device)
    for b in range(steps_per_epoch):
        step += 1
        if step <= end and step % 100 == 0:  # tfmot's should_prune, begin_step 0, frequency 100
            update_masks(step)
        with torch.no_grad():
            for w, m in zip(weights, masks):
                w.mul_(m)
        idx = order[b * batch:(b + 1) * batch]
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for w, m in zip(weights, masks):
            w.mul_(m)
        val_acc = (model(xv).argmax(1) == yv).float().mean().item()
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "val_accuracy": val_acc, "threads": torch.get_num_threads(), "device": str(device)}))
