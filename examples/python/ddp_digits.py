"""DDP with torchrun (gloo, CPU): every rank prunes its own replica and, since the weights are
identical after the gradient all-reduce and selection is deterministic, computes the same masks.
Each rank writes the digest of its masks at every update to OUT/rank<r>.json.

    torchrun --nproc_per_node 2 examples/python/ddp_digits.py --out /tmp/ddp
    python examples/python/ddp_digits.py --out /tmp/single --world 2   # one process, same global batches

With `--track ADDR` the run is tracked by the prune service at ADDR: only rank 0 reports (the
other ranks' `track` returns a run that does nothing), and finishes it at the end.
"""

import argparse
import gc
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prune  # noqa: E402
from common import digest, digits, mlp  # noqa: E402

PRUNING = {
    "schedule": {"kind": "polynomial_decay", "initial_sparsity": 0.3, "final_sparsity": 0.8, "begin_step": 5, "end_step": 45, "frequency": 5},
    "scope": "global",
}
BATCH = 32  # per rank


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--world", type=int, default=2, help="single process: the world size whose global batches it replays")
    ap.add_argument("--track", metavar="ADDR", help="a prune server that tracks the run (rank 0 reports)")
    ap.add_argument("--label", default="", help="the run's `ddp` label (with --track)")
    args = ap.parse_args()
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, args.world
    torch.set_num_threads(1)
    (x, y), _ = digits()
    model = mlp(hidden=64)
    pruner = prune.Pruner(model, PRUNING)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(optimizer)
    run = None
    if args.track:
        # Every rank calls track(); only rank 0 gets a run that reports.
        run = prune.Client(args.track).track(pruner, name="ddp-digits", labels={"ddp": args.label}, total_steps=args.steps)
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(len(x), generator=g)
    updates = []
    for step in range(args.steps):
        start = (step * BATCH * world) % (len(x) - BATCH * world)
        batch = order[start : start + BATCH * world]
        if distributed:  # this rank's share of the global batch
            batch = batch[rank * BATCH : (rank + 1) * BATCH]
        if pruner.step():
            updates.append([pruner.step_count, digest(pruner.masks)])
        optimizer.zero_grad()
        if distributed:
            loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
        else:
            # What DDP computes, op for op: each rank's gradient divided by the world size, then
            # summed (gloo's all-reduce; with two ranks the order of the sum cannot matter).
            shares = []
            for r in range(world):
                part = batch[r * BATCH : (r + 1) * BATCH]
                loss = torch.nn.functional.cross_entropy(net(x[part]), y[part])
                grads = torch.autograd.grad(loss, list(net.parameters()))
                shares.append([g / world for g in grads])
            for p, *gs in zip(net.parameters(), *shares):
                total = gs[0].clone()
                for g in gs[1:]:
                    total += g
                p.grad = total
        optimizer.step()
        if run is not None:
            run.log(loss=loss.item())
    if run is not None:
        run.finish()  # rank 0 uploads and waits for the export; elsewhere nothing happens
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"updates": updates, "final": digest(pruner.masks), "sparsity": pruner.sparsity(), "run": run.id if run else None}, f)
    print(f"rank {rank}: {len(updates)} mask updates, final {updates[-1][1][:16]}")
    if distributed:
        # DDP holds the process group, inside reference cycles: collect it now, so that gloo's
        # threads are joined while Python runs. Left to interpreter shutdown, a gloo thread that
        # frees a tensor needs the GIL, is ended by Python and aborts the process (torch 2.13).
        del net, optimizer
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
