"""The repository's tfmot goldens (tests/golden, tfmot 0.8.1) through the package."""

import json
import os

import numpy as np
import pytest
import torch

import prune
from conftest import GOLDEN

MASKS = json.load(open(os.path.join(GOLDEN, "masks.json")))["cases"]
SCHEDULES = json.load(open(os.path.join(GOLDEN, "schedules.json")))["cases"]


def f32(x):
    return float(np.float32(x))


def test_the_golden_sets_are_whole():
    assert len(MASKS) >= 60 and {c["kind"] for c in SCHEDULES} == {"polynomial_decay", "constant_sparsity"}


@pytest.mark.parametrize("case", MASKS, ids=[c["name"] for c in MASKS])
def test_mask_matches_tfmot(case):
    w = torch.tensor(case["weights"], dtype=torch.float32).reshape(case["shape"])
    got = prune.mask(w, f32(case["sparsity"]), block_size=case["block_size"], block_pooling=case["block_pooling"], m_by_n=case["m_by_n"])
    want = torch.tensor(case["mask"]).reshape(case["shape"]).bool()
    assert got.dtype == torch.bool and got.shape == w.shape
    assert torch.equal(got, want), f"{int((got != want).sum())} elements differ"


@pytest.mark.parametrize("case", SCHEDULES, ids=[f"{c['kind']}-{i}" for i, c in enumerate(SCHEDULES)])
def test_schedule_matches_tfmot_bit_for_bit(case):
    schedule = {"kind": case["kind"], **case["params"]}
    for step, should_prune, sparsity in case["steps"]:
        value = prune.schedule_sparsity(schedule, step, always=True)
        assert np.float32(value).tobytes() == np.float32(sparsity).tobytes(), (step, value, sparsity)
        due = prune.schedule_sparsity(schedule, step)
        assert (due is not None) == should_prune, step
        if due is not None:
            assert due == value


def test_pruner_driven_step_by_step_follows_the_golden_schedule():
    """A Pruner over one Linear, stepped through a golden PolynomialDecay: masks change exactly
    at tfmot's pruning steps, each keeping k = round_half_even(f32(n) * (1 - s)) weights of the
    weights at that step, with s the golden sparsity."""
    case = next(c for c in SCHEDULES if c["kind"] == "polynomial_decay" and c["params"]["begin_step"] > 0)
    by_step = {s: (p, v) for s, p, v in case["steps"]}
    torch.manual_seed(5)
    layer = torch.nn.Linear(40, 30, bias=False)
    pruner = prune.Pruner(layer, {"schedule": {"kind": case["kind"], **case["params"]}})
    last = max(by_step)
    updates = 0
    for step in range(1, last + 1):
        with torch.no_grad():  # the "optimizer": weights move between steps
            layer.weight.add_(torch.randn_like(layer.weight) * 0.01)
        before = layer.weight.detach().clone()
        recomputed = pruner.step()
        assert pruner.step_count == step
        if step not in by_step:
            continue
        should_prune, sparsity = by_step[step]
        assert recomputed == should_prune, step
        if should_prune:
            updates += 1
            n = before.numel()
            k = int(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity))))
            m = pruner.masks["weight"]
            assert int(m.sum()) == max(min(k, n), 1), step
            assert torch.equal(m, prune.mask(before, sparsity))
            assert torch.equal(layer.weight, before * m)
    assert updates >= 3
