"""The digits loop of digits_loop.py, tracked by a prune service: the job shows the loop's step,
loss, validation accuracy and per-tensor sparsity while it runs (`prunectl status`, `prunectl
metrics`, the dashboard), and leaving the `with` block uploads the pruned weights, which the service
exports as it exports its own jobs (bitmask + zstd here; `prunectl download` gets them).

    prune-server &                     # listening on 127.0.0.1:50051
    python examples/python/tracked_digits.py --addr http://127.0.0.1:50051 --out /tmp/tracked

Run it again with the same --request-id after killing it and it re-attaches to the same job.
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
    "schedule": {"kind": "polynomial_decay", "initial_sparsity": 0.5, "final_sparsity": 0.8, "begin_step": 40, "end_step": 120, "frequency": 20}
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default=os.environ.get("PRUNE_ADDR", "http://127.0.0.1:50051"))
    ap.add_argument("--token", default=os.environ.get("PRUNE_TOKEN"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--request-id", help="re-attaches a restarted loop to its run")
    ap.add_argument("--out", default="tracked-out")
    args = ap.parse_args()
    (x, y), (vx, vy) = digits()
    model = mlp()
    steps_per_epoch = -(-len(x) // 32)
    pruner = prune.Pruner(model, PRUNING, total_steps=args.epochs * steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(optimizer)
    client = prune.Client(args.addr, token=args.token)
    g = torch.Generator().manual_seed(1)
    with client.track(pruner, name="tracked-digits", labels={"example": "tracked_digits"}, request_id=args.request_id,
                      export={"sparse_format": "bitmask", "compression": "zstd"}) as run:
        print(f"tracking as {run.id} on {client.addr}", flush=True)
        for epoch in range(args.epochs):
            run.epoch = epoch
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 32):
                idx = order[i : i + 32]
                pruner.step()  # reports the step, and the sparsity when masks are recomputed
                logits = model(x[idx])
                loss = torch.nn.functional.cross_entropy(logits, y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                run.log(loss=loss.item(), accuracy=(logits.argmax(1) == y[idx]).float().mean().item())
            with torch.no_grad():
                run.log(val_accuracy=(model(vx).argmax(1) == vy).float().mean().item())
    # Leaving the block finished the run: the service exported the weights; the job SUCCEEDED.
    job = client.job(run.id)
    os.makedirs(args.out, exist_ok=True)
    artifact = client.download(run.id, os.path.join(args.out, "model.safetensors"))
    result = {"job": run.id, "state": job["state"], "step": job["step"], "artifact": artifact["path"],
              "sparsity": pruner.sparsity()}
    print(json.dumps(result))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
