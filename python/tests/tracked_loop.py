"""A tracked digits loop the tests run as a process of its own, to kill it (SIGKILL) where they
choose and restart it from its own checkpoint.

    python tracked_loop.py --addr ADDR --request-id ID --checkpoint CKPT [--stop-at N] [--idle S]

It checkpoints (model, optimizer, pruner state) every `--checkpoint-every` steps and resumes from
CKPT when it exists. With `--stop-at N` it reports up to step N, flushes, prints `ready <job id>`
and waits (`--idle S` seconds first, heartbeating, then `alive ...`) until it is killed. Otherwise
it finishes the run and prints `result <json>`.
"""

import argparse
import json
import os
import sys
import threading

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "python"))
import prune  # noqa: E402
from common import digits, mlp  # noqa: E402

PRUNING = {
    "schedule": {"kind": "polynomial_decay", "initial_sparsity": 0.3, "final_sparsity": 0.7, "begin_step": 5, "end_step": 35, "frequency": 5}
}
BATCH = 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--request-id", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--stop-at", type=int)
    ap.add_argument("--idle", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    (x, y), _ = digits()
    model = mlp(hidden=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = prune.Pruner(model, PRUNING, total_steps=args.steps)
    pruner.attach(optimizer)
    if os.path.exists(args.checkpoint):
        saved = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        pruner.load_state_dict(saved["pruner"])
    run = prune.Client(args.addr).track(pruner, name="tracked-loop", request_id=args.request_id, export={"sparse_format": "bitmask"})
    print(f"started {json.dumps({'id': run.id, 'session': run.session, 'reattached': run.reattached, 'start_step': run.start_step, 'step': pruner.step_count})}", flush=True)
    g = torch.Generator().manual_seed(5)
    order = torch.randperm(len(x), generator=g)
    while pruner.step_count < args.steps:
        pruner.step()
        step = pruner.step_count
        start = (step * BATCH) % (len(x) - BATCH)
        idx = order[start : start + BATCH]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log(loss=loss.item())
        if step % args.checkpoint_every == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruner": pruner.state_dict()}, args.checkpoint)
        if step == args.stop_at:
            assert run.flush(60), "the reports did not get through"
            print(f"ready {run.id}", flush=True)
            if args.idle:
                # Idle longer than the server's tracked timeout: the heartbeat keeps it RUNNING.
                threading.Event().wait(args.idle)
                print(f"alive {json.dumps({'flushed': run.flush(60), 'dropped': run.dropped})}", flush=True)
            threading.Event().wait()  # until killed
    job = run.finish(timeout=300)
    print(f"result {json.dumps({'job': job, 'step': pruner.step_count})}", flush=True)


if __name__ == "__main__":
    main()
