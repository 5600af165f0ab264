"""What the examples share: the repository's digits data (scripts/make_digits.py) and the MLP
of the service's digits job, and a digest of a pruner's masks."""

import hashlib
import os

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(ROOT, "data", "digits.safetensors")


def digits(validation_split=0.2):
    """x scaled to [0, 1] as the engine does (uint8 / 16), the last fraction held out (Keras)."""
    d = load_file(DIGITS)
    x, y = d["x"].float() / 16.0, d["y"].long()
    n = int(len(x) * (1 - validation_split))
    return (x[:n], y[:n]), (x[n:], y[n:])


def mlp(hidden=128, seed=1):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def digest(masks):
    """sha256 over every mask's name and bits, in order."""
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode())
        h.update(m.detach().cpu().numpy().tobytes())
    return h.hexdigest()
