"""Each example in examples/python runs, small: the plain digits loop, DDP under torchrun
against its single-process replay, a Trainer stopped and resumed mid-schedule, Lightning, and the
tracked digits loop against a real prune-server (conftest's `server`)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import prune
from conftest import EXAMPLES


def run(*args, timeout=240):
    # gloo on loopback: otherwise it resolves the host name to pick an interface, which a
    # sandbox or a busy resolver can make fail now and then.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_plain_digits_loop(tmp_path):
    out = run(sys.executable, os.path.join(EXAMPLES, "digits_loop.py"), "--epochs", "6", "--scale", "0.1", "--out", str(tmp_path))
    result = json.load(open(tmp_path / "result.json"))
    assert result["val_accuracy"] > 0.85, out
    assert result["sparsity"] == {"0.weight": pytest.approx(0.8, abs=1e-3), "2.weight": pytest.approx(0.8, abs=1e-2)}
    # The artifact holds exactly the stripped weights.
    back = prune.load(result["artifact"]["path"])
    assert 1 - (back["0.weight"] != 0).float().mean().item() == pytest.approx(0.8, abs=1e-3)


def test_ddp_ranks_compute_the_same_masks_as_one_process(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    run(torchrun, "--standalone", "--nproc_per_node", "2", os.path.join(EXAMPLES, "ddp_digits.py"), "--out", str(tmp_path / "ddp"))
    run(sys.executable, os.path.join(EXAMPLES, "ddp_digits.py"), "--out", str(tmp_path / "single"), "--world", "2")
    ranks = [json.load(open(tmp_path / "ddp" / f"rank{r}.json")) for r in (0, 1)]
    single = json.load(open(tmp_path / "single" / "rank0.json"))
    assert len(ranks[0]["updates"]) == 9  # steps 5, 10, ..., 45
    assert ranks[0]["updates"] == ranks[1]["updates"] == single["updates"]
    assert ranks[0]["final"] == single["final"]


def test_trainer_resumed_mid_schedule_continues_exactly(tmp_path):
    script = os.path.join(EXAMPLES, "hf_trainer.py")
    run(sys.executable, script, "--out", str(tmp_path / "whole"), "--max-steps", "32", timeout=400)
    whole = json.load(open(tmp_path / "whole" / "result.json"))
    # Stopped at 15: the checkpoint sits right before the mask update at step 16.
    run(sys.executable, script, "--out", str(tmp_path / "split"), "--max-steps", "32", "--stop-at", "15", timeout=400)
    stopped = json.load(open(tmp_path / "split" / "result.json"))
    assert stopped["step"] == 15 and os.path.isfile(tmp_path / "split" / "checkpoint-15" / "prune_pruner.pt")
    run(sys.executable, script, "--out", str(tmp_path / "split"), "--max-steps", "32", "--resume", timeout=400)
    resumed = json.load(open(tmp_path / "split" / "result.json"))
    assert resumed["step"] == whole["step"] == 32
    assert resumed["digest"] == whole["digest"]
    assert resumed["artifact"]["sha256"] == whole["artifact"]["sha256"]
    assert all(abs(s - 0.7) < 2e-3 for s in whole["sparsity"].values()), whole["sparsity"]


def test_lightning_module(tmp_path):
    run(sys.executable, os.path.join(EXAMPLES, "lightning_digits.py"), "--out", str(tmp_path))
    result = json.load(open(tmp_path / "result.json"))
    assert result["step"] == result["global_step"] == 90
    assert result["sparsity"] == {"net.0.weight": 0.5, "net.2.weight": pytest.approx(0.75, abs=1e-2)}
    assert result["val_accuracy"] > 0.8


def test_tracked_digits_loop(server, tmp_path):
    run(sys.executable, os.path.join(EXAMPLES, "tracked_digits.py"), "--addr", server.addr, "--out", str(tmp_path))
    result = json.load(open(tmp_path / "result.json"))
    steps = 4 * 45  # 4 epochs of 45 batches
    assert (result["state"], result["step"]) == ("SUCCEEDED", steps)
    assert result["sparsity"] == {"0.weight": pytest.approx(0.8, abs=1e-3), "2.weight": pytest.approx(0.8, abs=1e-2)}
    back = prune.load(result["artifact"])
    assert 1 - (back["0.weight"] != 0).float().mean().item() == pytest.approx(0.8, abs=1e-3)
    points = prune.Client(server.addr).metrics(result["job"])
    by_name = {}
    for p in points:
        by_name.setdefault(p["name"], []).append(p["step"])
    assert by_name["loss"] == by_name["accuracy"] == list(range(1, steps + 1))
    assert by_name["val_accuracy"] == [45, 90, 135, 180]
    assert by_name["sparsity/0.weight"] == [40, 60, 80, 100, 120]
