"""Pruner in a plain loop: its masks against an independent ranking (numpy, sort by magnitude,
ties to the lower index), applying after the optimizer changes nothing, resume is exact, strip
and export give plain files the service's readers take."""

import os
import warnings

import numpy as np
import pytest
import torch

import prune
from common import digits, mlp

SCHEDULE = {"kind": "polynomial_decay", "initial_sparsity": 0.3, "final_sparsity": 0.8, "begin_step": 3, "end_step": 33, "frequency": 6}


def keep_count(n, s):
    if s == 0:
        return n
    return min(max(int(np.round(np.float32(n) * (np.float32(1) - np.float32(s)))), 1), n)


def oracle(values, s):
    """Masks (flat, per tensor) that keep the k largest |w| over all `values` together, ties to
    the lower position: the rule of docs/pruning-semantics.md, sections 3 and 7."""
    flat = np.concatenate([v.detach().float().numpy().ravel() for v in values])
    order = np.argsort(-np.abs(flat), kind="stable")
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[: keep_count(flat.size, s)]] = True
    out, at = [], 0
    for v in values:
        out.append(torch.from_numpy(keep[at : at + v.numel()].reshape(tuple(v.shape))))
        at += v.numel()
    return out


def train(pruning, steps, attach, *, stop_at=None, resume=None, seed=1):
    """SGD with momentum on digits; returns the pruner, the model and, per mask update, the
    weights the masks were computed from."""
    (x, y), _ = digits()
    model = mlp(hidden=48, seed=seed)
    pruner = prune.Pruner(model, pruning)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        pruner.load_state_dict(resume["pruner"])
    if attach:
        pruner.attach(optimizer)
    ranked = {}
    for step in range(pruner.step_count + 1, steps + 1):
        if stop_at is not None and step > stop_at:
            break
        idx = torch.arange((step * 32) % 1400, (step * 32) % 1400 + 32)
        snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
        if pruner.step():
            ranked[step] = (snapshot, {n: m.clone() for n, m in pruner.masks.items()})
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return pruner, model, optimizer, ranked


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masks_are_the_independent_ranking_of_the_weights_as_the_optimizer_left_them(scope):
    pruner, model, _, ranked = train({"schedule": SCHEDULE, "scope": scope}, 40, attach=False)
    assert sorted(ranked) == [3, 9, 15, 21, 27, 33]
    for step, (weights, masks) in ranked.items():
        s = prune.schedule_sparsity(SCHEDULE, step)
        names = ["0.weight", "2.weight"]
        if scope == "global":
            want = oracle([weights[n] for n in names], s)
        else:
            want = [oracle([weights[n]], s)[0] for n in names]
        for n, w in zip(names, want):
            assert torch.equal(masks[n].cpu(), w), (step, n)
    final = pruner.sparsity()
    if scope == "layer":
        assert final == {"0.weight": pytest.approx(0.8, abs=1e-3), "2.weight": pytest.approx(0.8, abs=1e-2)}
    else:
        total = sum(m.numel() for m in pruner.masks.values())
        kept = sum(int(m.sum()) for m in pruner.masks.values())
        assert kept == keep_count(total, prune.schedule_sparsity(SCHEDULE, 33))
        assert final["0.weight"] != final["2.weight"]


def test_every_update_ranks_the_weights_before_it():
    # Step by step, the mask computed at each update is the oracle's on the weights just before.
    (x, y), _ = digits()
    model = mlp(hidden=48)
    pruner = prune.Pruner(model, {"schedule": SCHEDULE})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.attach(optimizer)
    checked = 0
    for step in range(1, 35):
        before = model[0].weight.detach().clone()
        if pruner.step():
            want = oracle([before], prune.schedule_sparsity(SCHEDULE, step))[0]
            # attach() masked the weights after the last optimizer step; the ranking must still
            # see what the optimizer left (as the service, which masks only before the forward).
            assert torch.equal(pruner.masks["0.weight"], want), step
            checked += 1
        loss = torch.nn.functional.cross_entropy(model(x[:64]), y[:64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert checked == 6


def test_applying_after_the_optimizer_does_not_change_the_masks():
    plain, plain_model, _, _ = train({"schedule": SCHEDULE}, 40, attach=False)
    hooked, hooked_model, _, _ = train({"schedule": SCHEDULE}, 40, attach=True)
    for n in plain.masks:
        assert torch.equal(plain.masks[n], hooked.masks[n]), n
    # Same weights once both are masked: the hook only multiplied the masks in earlier.
    plain.strip(), hooked.strip()
    for (n, a), (_, b) in zip(plain_model.state_dict().items(), hooked_model.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("stop_at", [14, 20])  # 14: the next step (15) recomputes masks
def test_resume_from_a_saved_state_continues_bit_for_bit(tmp_path, stop_at):
    pruning = {"schedule": SCHEDULE, "scope": "global"}
    whole, whole_model, _, _ = train(pruning, 40, attach=True)
    first, model, optimizer, _ = train(pruning, 40, attach=True, stop_at=stop_at)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruner": first.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    assert saved["pruner"]["step"] == stop_at
    resumed, resumed_model, _, _ = train(pruning, 40, attach=True, resume=saved)
    assert resumed.step_count == whole.step_count == 40
    for n in whole.masks:
        assert torch.equal(whole.masks[n], resumed.masks[n]), n
    for (n, a), (_, b) in zip(whole_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), n


def test_a_state_of_another_table_is_refused():
    model = mlp(hidden=8)
    state = prune.Pruner(model, {"schedule": SCHEDULE}).state_dict()
    other = prune.Pruner(mlp(hidden=8), {"schedule": SCHEDULE, "scope": "global"})
    with pytest.raises(ValueError, match="another \\[pruning\\] table"):
        other.load_state_dict(state)


def test_strip_leaves_plain_names_and_export_reads_back(tmp_path):
    pruner, model, _, _ = train({"schedule": SCHEDULE, "prune_bias": True}, 36, attach=True)
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    assert sorted(masks) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    stripped = pruner.strip()
    state = stripped.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    fresh = mlp(hidden=48, seed=9)
    fresh.load_state_dict(state, strict=True)
    for n, m in masks.items():
        assert not bool(((state[n] != 0) & ~m).any()), f"{n}: a pruned weight is non-zero"
    import copy

    copy.deepcopy(stripped)  # torch.nn.utils.prune's reparametrisation breaks this (pytorch #37322)
    for fmt, compression in [("bitmask", "zstd"), ("dense", "gzip"), ("bitmask", "none")]:
        out = prune.export(stripped, str(tmp_path / f"{fmt}.safetensors"), format=fmt, compression=compression)
        assert os.path.getsize(out["path"]) == out["bytes"]
        back = prune.load(out["path"])
        assert list(back) == sorted(state)
        for n, t in state.items():
            assert back[n].dtype == t.dtype and torch.equal(back[n], t), n  # -0.0 reads back as +0.0, equal
    # The same weights always give the same bytes.
    again = prune.export(stripped, str(tmp_path / "again.safetensors"), format="bitmask", compression="zstd")
    assert again["sha256"] == prune.export(state, str(tmp_path / "sd.safetensors"))["sha256"]


def test_compressed_tensors_reads_the_bitmask_export(tmp_path):
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor

    pruner, model, _, _ = train({"schedule": SCHEDULE}, 36, attach=True)
    pruner.strip()
    folder = tmp_path / "packed"
    folder.mkdir()
    prune.export(model, str(folder / "model.safetensors"), format="bitmask", compression="none")
    config = {"sparsity_config": {"format": "sparse-bitmask", "global_sparsity": 0.8, "sparsity_structure": "unstructured", "targets": ["0", "2"], "ignore": []}}
    compressor = ModelCompressor.from_compression_config(config)
    got = {n: t for n, t in compressor.sparsity_compressor.decompress(str(folder))}
    want = model.state_dict()
    assert sorted(got) == sorted(want), ct.__version__
    for n, t in want.items():
        assert got[n].dtype == t.dtype and torch.equal(got[n], t), n

