"""A plain PyTorch loop on the repository's digits data with prune.Pruner: the service's digits
job (PolynomialDecay 0.5 -> 0.8, SGD with momentum) in your own loop, then strip and export.

    python examples/python/digits_loop.py --epochs 40 --out /tmp/digits
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prune  # noqa: E402
from common import digits, mlp  # noqa: E402

PRUNING = {
    "schedule": {
        "kind": "polynomial_decay",
        "initial_sparsity": 0.5,
        "final_sparsity": 0.8,
        "begin_step": 900,
        "end_step": 1125,
        "frequency": 45,
    }
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the schedule's steps (quick runs)")
    ap.add_argument("--out", default="digits-out")
    args = ap.parse_args()
    schedule = dict(PRUNING["schedule"])
    for key in ("begin_step", "end_step", "frequency"):
        schedule[key] = max(1, int(schedule[key] * args.scale))
    (x, y), (vx, vy) = digits()
    model = mlp()
    steps_per_epoch = -(-len(x) // 32)
    pruner = prune.Pruner(model, {"schedule": schedule}, total_steps=args.epochs * steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(optimizer)  # masks multiplied in after every optimizer.step()
    g = torch.Generator().manual_seed(1)
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            if pruner.step():  # before the forward pass
                print(f"step {pruner.step_count}: sparsity {pruner.sparsity()}")
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model = pruner.strip()
    with torch.no_grad():
        accuracy = (model(vx).argmax(1) == vy).float().mean().item()
    os.makedirs(args.out, exist_ok=True)
    artifact = prune.export(model, os.path.join(args.out, "model.safetensors"), format="bitmask", compression="zstd")
    sparsity = {n: 1 - (t != 0).float().mean().item() for n, t in model.state_dict().items() if n.endswith("weight")}
    result = {"val_accuracy": accuracy, "sparsity": sparsity, "artifact": artifact}
    print(json.dumps(result))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
