"""Channel pruning side by side, in one run: prune's slim artifact against Torch-Pruning 1.6.1
(DepGraph, `MetaPruner` with `GroupMagnitudeImportance(p=2)`) and the dense model, all on the
same CNN, data split, optimiser, epochs and channel-sparsity schedule.

    compare.py JOB.toml PRUNE_ARTIFACT PRUNE_REPORT.json PRUNE_SECONDS

PRUNE_ARTIFACT is the job's downloaded (decompressed) slim safetensors; its metadata names the
slim layers. Torch-Pruning prunes at the same steps to the same sparsities as the job's
schedule (its `iterative_pruning_ratio_scheduler` set to them) and, as its examples do,
re-creates the optimiser after each structural step. Latency: eval mode, no gradients, this
process's default threads, 5 warm-ups then RUNS timed runs per model, the models taking turns
in a rotating order, median.
Prints a table and one JSON line.
"""

import copy
import json
import pathlib
import statistics
import sys
import time
import tomllib

import torch
import torch_pruning as tp
from safetensors import safe_open
from safetensors.torch import load_file

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/python"))
import sequential_module as sm  # noqa: E402

RUNS = 30
BATCHES = (1, 256)


def schedule_points(s, total_steps):
    """(step, sparsity) at each pruning step of a polynomial_decay schedule (tfmot's rules)."""
    begin, end, freq = s["begin_step"], s["end_step"], s.get("frequency", 100)
    power = s.get("power", 3)
    points = []
    for step in range(1, total_steps + 1):
        if begin <= step <= end and (step - begin) % freq == 0:
            p = min(1.0, max(0.0, (step - begin) / (end - begin)))
            points.append((step, s["final_sparsity"] + (s["initial_sparsity"] - s["final_sparsity"]) * (1 - p) ** power))
    return points


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def train(layers, t, x, y, prune_at=None):
    """The job's recipe in PyTorch; `prune_at`: {step: pruner} steps at which Torch-Pruning
    removes channels (before that step's batch, as the job recomputes masks)."""
    torch.manual_seed(t.get("seed", 0))
    model = sm.build(layers)
    make_opt = lambda: torch.optim.SGD(model.parameters(), lr=t["learning_rate"], momentum=t.get("momentum", 0.0))
    opt = make_opt()
    batch, step = t["batch_size"], 0
    pruner = None
    if prune_at is not None:
        points, ignored = prune_at
        ratios = [0.0] + [s for _, s in points]
        pruner = tp.pruner.MetaPruner(
            model, x[:2], importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratios[-1], iterative_steps=len(points),
            iterative_pruning_ratio_scheduler=lambda ratio, steps: ratios,
            ignored_layers=ignored(model))
        steps = {s for s, _ in points}
    g = torch.Generator().manual_seed(t.get("seed", 0))
    for _ in range(t["epochs"]):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            step += 1
            if pruner is not None and step in steps:
                pruner.step()
                opt = make_opt()
            idx = order[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def latency(models, x):
    """Median ms of one forward pass per model, per batch size, alternating the models."""
    for m in models.values():
        m.eval()
    out = {}
    for bs in BATCHES:
        xb = x[torch.arange(bs) % len(x)]
        times = {name: [] for name in models}
        with torch.no_grad():
            for _ in range(5):
                for m in models.values():
                    m(xb)
            names = list(models)
            for r in range(RUNS):
                # Rotated each round, so no model always runs right after the big dense one.
                for name in names[r % len(names):] + names[:r % len(names)]:
                    t0 = time.perf_counter()
                    models[name](xb)
                    times[name].append((time.perf_counter() - t0) * 1000)
        out[bs] = {name: statistics.median(v) for name, v in times.items()}
    return out


def main(job_file, artifact, report_file, prune_seconds):
    job = tomllib.loads(pathlib.Path(job_file).read_text())
    layers, t = job["model"]["sequential"], job["training"]
    digits = load_file(str(REPO / "data/digits.safetensors"))
    x, y = digits["x"].float() / 16.0, digits["y"].long()
    n_train = int(len(x) * (1 - job["data"].get("validation_split", 0.0)))
    xt, yt, xv, yv = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    total = t["epochs"] * -(-n_train // t["batch_size"])
    points = schedule_points(job["pruning"]["schedule"], total)
    sparsity = points[-1][1]

    with safe_open(artifact, "pt") as f:
        slim_layers = json.loads(f.metadata()["prune.slim_sequential"])
    ours = sm.build(slim_layers)
    ours.load_state_dict(load_file(artifact), strict=True)
    ours.eval()
    report = json.loads(pathlib.Path(report_file).read_text())

    t0 = time.perf_counter()
    dense = train(layers, t, xt, yt)
    dense_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = train(layers, t, xt, yt, prune_at=(points, lambda m: [m[len(m) - 1]]))
    tp_seconds = time.perf_counter() - t0

    models = {"dense": dense, "prune": ours, "torch-pruning": theirs}
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    acc = {n: accuracy(m, xv, yv) for n, m in models.items()}
    # Timed on fresh copies made one after another: where a model's tensors were allocated
    # (ours is loaded before two trainings run) moved its batch-256 time by up to 25% in trials.
    lat = latency({n: copy.deepcopy(m) for n, m in models.items()}, xv)
    seconds = {"dense": dense_seconds, "prune": float(prune_seconds), "torch-pruning": tp_seconds}

    print(f"{job.get('name', 'job')}: {t['epochs']} epochs, {len(points)} pruning steps to {sparsity:.0%} of the channels; "
          f"{torch.get_num_threads()} threads; latency: median of {RUNS} alternating runs")
    head = f"{'':15s} {'val acc':>8s} {'params':>9s}" + "".join(f" {'b' + str(b) + ' ms':>9s} {'speedup':>8s}" for b in BATCHES)
    print(head + f" {'train s':>8s}")
    for n in models:
        row = f"{n:15s} {acc[n]:8.4f} {params[n]:9d}"
        for b in BATCHES:
            row += f" {lat[b][n]:9.3f} {lat[b]['dense'] / lat[b][n]:7.2f}x"
        print(row + f" {seconds[n]:8.1f}")
    print(f"prune's report: final val accuracy {report['final_val_accuracy']:.4f}, "
          f"dense (warm-up) {report.get('dense_val_accuracy') or float('nan'):.4f}, "
          f"FLOPs {report['channels']['flops_before']} -> {report['channels']['flops_after']}; "
          + ", ".join(f"worker-measured speedup at batch {i['batch_size']} {i['speedup']:.2f}x" for i in report.get("inference", [])))
    print(json.dumps({"accuracy": acc, "params": params, "latency_ms": lat, "train_seconds": seconds,
                      "sparsity": sparsity}))


if __name__ == "__main__":
    main(*sys.argv[1:])
