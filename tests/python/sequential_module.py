"""The PyTorch module that `docs/job-spec.md` documents for a `model.sequential` spec.

Used three ways:
  python sequential_module.py golden OUT.json
      writes engine/src/testdata/layers_golden.json: the state_dict() names and shapes of a
      model using every layer type, and BatchNorm train/eval outputs, computed by PyTorch.
  python sequential_module.py check JOB.toml ARTIFACT.safetensors
      loads a job's (decompressed, dense) artifact into the module with
      load_state_dict(strict=True) and prints its accuracy on the digits data as JSON.
  import sequential_module; sequential_module.build(layers)
"""

import json
import pathlib
import sys
import tomllib

import torch
from torch import nn


class Residual(nn.Module):
    """`{ type = "residual", layers = [...], projection = {...} }`."""

    def __init__(self, layers, projection=None):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.projection = projection  # None registers nothing: no `projection.*` keys

    def forward(self, x):
        shortcut = x if self.projection is None else self.projection(x)
        return self.layers(x) + shortcut


class Reshape(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def layer(spec):
    kind = spec["type"]
    if kind == "linear":
        return nn.Linear(spec["in"], spec["out"], bias=spec.get("bias", True))
    if kind == "conv2d":
        return nn.Conv2d(spec["in"], spec["out"], spec["kernel"], stride=spec.get("stride", 1),
                         padding=spec.get("padding", 0), bias=spec.get("bias", True))
    if kind == "batchnorm1d":
        return nn.BatchNorm1d(spec["features"])
    if kind == "batchnorm2d":
        return nn.BatchNorm2d(spec["features"])
    if kind == "avgpool2d":
        return nn.AvgPool2d(spec["kernel"], stride=spec.get("stride"))
    if kind == "global_avgpool":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind == "maxpool2d":
        return nn.MaxPool2d(spec["kernel"])
    if kind == "residual":
        p = spec.get("projection")
        projection = None if p is None else nn.Conv2d(
            p["in"], p["out"], 1, stride=p.get("stride", 1), bias=p.get("bias", True))
        return Residual([layer(s) for s in spec["layers"]], projection)
    if kind == "reshape":
        return Reshape(spec["shape"])
    if kind == "dropout":
        return nn.Dropout(spec["p"])
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "flatten": nn.Flatten}[kind]()


def build(layers):
    return nn.Sequential(*[layer(s) for s in layers])


# Every layer type once; the Rust test builds the same spec and compares names and shapes.
GOLDEN_SPEC = [
    {"type": "reshape", "shape": [1, 8, 8]},
    {"type": "conv2d", "in": 1, "out": 4, "kernel": 3, "padding": 1},
    {"type": "batchnorm2d", "features": 4},
    {"type": "relu"},
    {"type": "residual", "layers": [
        {"type": "conv2d", "in": 4, "out": 4, "kernel": 3, "padding": 1, "bias": False},
        {"type": "batchnorm2d", "features": 4},
        {"type": "residual", "layers": [{"type": "tanh"}]},
    ]},
    {"type": "residual", "layers": [
        {"type": "conv2d", "in": 4, "out": 6, "kernel": 3, "stride": 2, "padding": 1},
    ], "projection": {"in": 4, "out": 6, "stride": 2, "bias": False}},
    {"type": "avgpool2d", "kernel": 2, "stride": 1},
    {"type": "maxpool2d", "kernel": 1},
    {"type": "global_avgpool"},
    {"type": "batchnorm1d", "features": 6},
    {"type": "dropout", "p": 0.5},
    {"type": "linear", "in": 6, "out": 5},
    {"type": "sigmoid"},
    {"type": "flatten"},
]


def pattern(shape, scale, shift):
    """Inputs both sides can make without sharing a RNG: ((i * 37) % 101) / 10 * scale + shift."""
    n = 1
    for d in shape:
        n *= d
    i = torch.arange(n, dtype=torch.int64)
    return (((i * 37) % 101).float() / 10.0 * scale + shift).reshape(shape)


def golden(out):
    model = build(GOLDEN_SPEC)
    names = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    # BatchNorm2d(3): two training steps, then eval; weight and bias not at their defaults.
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.1, -0.2]))
    bn.train()
    bn(pattern([4, 3, 2, 2], 1.0, -5.0))
    train_out = bn(pattern([4, 3, 2, 2], 0.5, 1.0))
    bn.eval()
    eval_out = bn(pattern([4, 3, 2, 2], 1.0, -5.0))
    bn1 = nn.BatchNorm1d(2)
    bn1.train()
    train_1d = bn1(pattern([3, 2, 5], 1.0, 0.0))
    bn1.eval()
    eval_1d = bn1(pattern([3, 2, 5], 1.0, 0.0))
    flat = lambda t: [float(v) for v in t.detach().flatten()]
    result = {
        "torch": torch.__version__,
        "spec": GOLDEN_SPEC,
        "state_dict": names,
        "batchnorm2d": {
            "train_out": flat(train_out), "eval_out": flat(eval_out),
            "running_mean": flat(bn.running_mean), "running_var": flat(bn.running_var),
            "num_batches_tracked": int(bn.num_batches_tracked),
        },
        "batchnorm1d": {
            "train_out": flat(train_1d), "eval_out": flat(eval_1d),
            "running_mean": flat(bn1.running_mean), "running_var": flat(bn1.running_var),
        },
    }
    pathlib.Path(out).write_text(json.dumps(result, indent=1) + "\n")


SLIM_LAYERS_KEY = "prune.slim_sequential"


def layers_of(job, artifact):
    """The job's layers, or a slim artifact's own (its metadata names them)."""
    from safetensors import safe_open

    with safe_open(artifact, "pt") as f:
        slim = (f.metadata() or {}).get(SLIM_LAYERS_KEY)
    return json.loads(slim) if slim else job["model"]["sequential"]


def check(job_file, artifact):
    from safetensors.torch import load_file

    job = tomllib.loads(pathlib.Path(job_file).read_text())
    model = build(layers_of(job, artifact))
    model.load_state_dict(load_file(artifact), strict=True)
    model.eval()
    digits = load_file(str(pathlib.Path(__file__).parents[2] / "data/digits.safetensors"))
    x, y = digits["x"].float() / 16.0, digits["y"].long()  # as the engine scales them
    n_train = int(len(x) * (1 - job["data"].get("validation_split", 0.0)))
    with torch.no_grad():
        predicted = model(x[n_train:]).argmax(-1)
    zeros = {k: float((v == 0).float().mean()) for k, v in model.state_dict().items() if v.dim() >= 2}
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    print(json.dumps({"val_accuracy": float((predicted == y[n_train:]).float().mean()), "zeros": zeros,
                      "shapes": shapes}))


if __name__ == "__main__":
    {"golden": golden, "check": check}[sys.argv[1]](*sys.argv[2:])
