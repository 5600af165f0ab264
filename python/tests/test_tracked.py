"""Tracked runs against the real `prune-server` (conftest.Server: the binary on 127.0.0.1:0 with a
data directory of its own): the service shows a loop the package drives like one of its own jobs.

Nothing here sleeps to synchronise: reports are awaited with `run.flush`, jobs with `Client.wait`
(WatchJob) and child processes by the lines they print, each with a deadline.
"""

import json
import os
import signal
import subprocess
import sys
import uuid
import warnings

import pytest
import torch

import prune
from conftest import EXAMPLES, Lines, Server, cargo_binary
from common import digits, mlp

HERE = os.path.dirname(os.path.abspath(__file__))
PRUNING = {
    "schedule": {"kind": "polynomial_decay", "initial_sparsity": 0.3, "final_sparsity": 0.75, "begin_step": 10, "end_step": 40, "frequency": 10}
}


def child_env():
    # gloo on loopback (see test_examples.run).
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def spawn(*args):
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    return process, Lines(process.stdout)


def finish_child(process, timeout=300):
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]


def loop(pruner, model, steps, run=None, on_step=None):
    """SGD on digits for `steps` batches; returns {step: loss} and {update step: sparsity}."""
    (x, y), _ = digits()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(optimizer)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    losses, updates = {}, {}
    for _ in range(steps):
        updated = pruner.step()
        step = pruner.step_count
        if updated:
            updates[step] = pruner.sparsity()
        start = (step * 32) % (len(x) - 32)
        idx = order[start : start + 32]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[step] = loss.item()
        if run is not None:
            run.log(loss=loss.item())
        if on_step is not None:
            on_step(step)
    return losses, updates


def series(client, job_id):
    """{name: {step: value}} of the job's metrics, failing on a duplicate (name, step)."""
    out = {}
    for p in client.metrics(job_id):
        steps = out.setdefault(p["name"], {})
        assert p["step"] not in steps, f"two points for {p['name']} at step {p['step']}"
        steps[p["step"]] = p["value"]
    return out


def test_a_plain_loop_is_tracked_end_to_end(server, tmp_path):
    client = prune.Client(server.addr)
    torch.manual_seed(0)
    model = mlp(hidden=32)
    pruner = prune.Pruner(model, PRUNING, total_steps=50)
    run = client.track(pruner, name="digits-loop", labels={"test": "e2e"}, export={"sparse_format": "bitmask", "compression": "zstd"})
    assert run.id.startswith("job-") and not run.reattached and run.session >= 1
    seen = {}

    def look(step):
        if step == 25:  # mid-loop: the service shows the run as a running job at the loop's step
            assert run.flush(60)
            seen.update(client.job(run.id))

    losses, updates = loop(pruner, model, 50, run, look)
    assert (seen["kind"], seen["state"], seen["step"], seen["total_steps"]) == ("tracked", "RUNNING", 25, 50)
    assert seen["labels"] == {"test": "e2e"} and seen["client"].endswith(f":{os.getpid()}")
    assert {s["name"]: s["sparsity"] for s in seen["sparsity"]} == updates[20]

    job = run.finish(timeout=300)
    assert job["state"] == "SUCCEEDED", job
    assert job["step"] == 50

    # The metrics are what the loop computed: the loss at every step, the sparsity at every update.
    got = series(client, run.id)
    assert got["loss"] == losses
    assert sorted(updates) == [10, 20, 30, 40]
    for name in pruner.masks:
        assert got[f"sparsity/{name}"] == {step: s[name] for step, s in updates.items()}

    # The report's per-tensor table is the pruner's final sparsity.
    report = client.report(run.id)
    table = {t["name"]: t["sparsity"] for t in report["tensors"] if t["pruned"]}
    assert table.keys() == pruner.sparsity().keys()
    for name, s in pruner.sparsity().items():
        assert table[name] == pytest.approx(s, abs=1e-6)

    # The bitmask artifact unpacks to the model's (masked) weights, bit for bit.
    assert [(a["format"], a["sparse_format"]) for a in job["artifacts"]] == [("safetensors", "bitmask")]
    downloaded = client.download(run.id, tmp_path / "model.safetensors")
    back = prune.load(downloaded["path"])
    state = model.state_dict()
    assert back.keys() == state.keys()
    for name, t in state.items():
        assert torch.equal(back[name], t), name


def test_a_killed_loop_restarted_from_its_checkpoint_reattaches(server, tmp_path):
    script = os.path.join(HERE, "tracked_loop.py")
    common = ["--addr", server.addr, "--request-id", f"reattach-{uuid.uuid4()}", "--checkpoint", str(tmp_path / "ckpt.pt")]
    first, lines = spawn(script, *common, "--stop-at", "25")
    started = json.loads(lines.wait_for("started ", 120))
    job_id = lines.wait_for("ready ", 120)
    first.kill()  # SIGKILL: no goodbye to the server
    first.wait(timeout=30)
    assert started["id"] == job_id and not started["reattached"]

    # From the step-20 checkpoint: steps 21-25 are reported a second time.
    second, lines = spawn(script, *common)
    again = json.loads(lines.wait_for("started ", 120))
    assert again["id"] == job_id
    assert again["reattached"] and again["session"] == started["session"] + 1
    assert (again["start_step"], again["step"]) == (25, 20)
    result = json.loads(lines.wait_for("result ", 300))
    finish_child(second)
    assert result["job"]["state"] == "SUCCEEDED"

    client = prune.Client(server.addr)
    got = series(client, job_id)  # fails on a duplicate (name, step)
    assert sorted(got["loss"]) == list(range(1, 41))
    assert sorted(got["sparsity/0.weight"]) == [5, 10, 15, 20, 25, 30, 35]


def test_a_loop_that_stops_reporting_fails_after_the_tracked_timeout(start_server):
    server = start_server("--tracked-timeout-secs", "3")
    client = prune.Client(server.addr)
    tmp = os.path.dirname(server.data_dir)
    script = os.path.join(HERE, "tracked_loop.py")
    # Idle for longer than the timeout before the kill: the heartbeat (every second, a third of
    # it) keeps the run alive meanwhile, with two beats to spare on a busy machine.
    child, lines = spawn(script, "--addr", server.addr, "--request-id", "timeout", "--checkpoint", os.path.join(tmp, "c.pt"), "--stop-at", "5", "--idle", "4.5")
    job_id = lines.wait_for("ready ", 120)
    alive = json.loads(lines.wait_for("alive ", 120))
    assert alive == {"flushed": True, "dropped": 0}
    assert client.job(job_id)["state"] == "RUNNING"
    child.kill()
    child.wait(timeout=30)
    job = client.wait(job_id, timeout=120)
    assert job["state"] == "FAILED"
    assert "client stopped reporting" in job["error"], job["error"]


def test_a_server_that_goes_down_costs_reports_not_the_loop(start_server):
    server = start_server()
    client = prune.Client(server.addr)
    model = mlp(hidden=32)
    pruner = prune.Pruner(model, PRUNING)

    def kill_at_10(step):
        if step == 10:
            assert run.flush(60)
            server.kill()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = client.track(pruner)
        losses, _ = loop(pruner, model, 60, run, kill_at_10)
        assert run.flush(60) is False  # retried, then dropped: not delivered
        run.log(loss=1.0)  # still no exception
        run.close()
    assert len(losses) == 60 and pruner.step_count == 60
    tracking = [w for w in caught if issubclass(w.category, prune.TrackingWarning)]
    assert len(tracking) == 1, [str(w.message) for w in tracking]
    assert "dropped" in str(tracking[0].message)
    assert run.dropped > 0
    # A client made while the server is down says so at once.
    with pytest.raises(prune.TrackingError, match="cannot connect"):
        prune.Client(server.addr)


def test_an_exception_inside_with_fails_the_run_with_its_message(server):
    client = prune.Client(server.addr)
    model = mlp(hidden=32)
    pruner = prune.Pruner(model, PRUNING)
    with pytest.raises(FloatingPointError, match="loss diverged"):
        with client.track(pruner, name="diverges") as run:
            for _ in range(3):
                pruner.step()
            raise FloatingPointError("loss diverged at step 3")
    job = client.wait(run.id, timeout=60)
    assert job["state"] == "FAILED"
    assert "loss diverged at step 3" in job["error"]
    assert job["step"] == 3


def test_bad_specs_name_the_field(server):
    client = prune.Client(server.addr)
    with pytest.raises(prune.SpecError, match=r"pruning\.shedule"):
        prune.Pruner(mlp(hidden=8), {"shedule": {}})
    pruner = prune.Pruner(mlp(hidden=8), PRUNING)
    with pytest.raises(prune.SpecError, match=r"export\.sparse_formt"):
        client.track(pruner, export={"sparse_formt": "bitmask"})
    # The server's own check, past the local one: one `field: reason` line per violation.
    with pytest.raises(prune.SpecError, match=r"pruning\.bogus"):
        client._core.start_tracked_run('{"pruning": {"bogus": 1}}')
    with pytest.raises(prune.SpecError, match=r"(?m)^training: a tracked run's model, data and training are the loop's own"):
        client._core.start_tracked_run(json.dumps({"pruning": PRUNING, "training": {"epochs": 3}}))
    # A run whose request id was used for another run.
    rid = f"reuse-{uuid.uuid4()}"
    client.track(pruner, name="a", request_id=rid).close()
    with pytest.raises(prune.TrackingError, match="REQUEST_ID_REUSED"):
        client.track(pruner, name="b", request_id=rid)
    with pytest.raises(ValueError, match="metric name"):
        client.track(pruner).log(**{"": 1.0})


def test_ddp_reports_from_rank_zero_only(server, tmp_path):
    label = str(uuid.uuid4())
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", os.path.join(EXAMPLES, "ddp_digits.py"), "--out", str(tmp_path), "--track", server.addr, "--label", label],
        capture_output=True, text=True, timeout=300, env=child_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[1]["run"] is None and ranks[0]["run"].startswith("job-")
    client = prune.Client(server.addr)
    jobs = client.jobs(f'labels.ddp = "{label}"')
    assert [j["id"] for j in jobs] == [ranks[0]["run"]]
    job = client.job(ranks[0]["run"])
    assert (job["kind"], job["state"], job["step"]) == ("tracked", "SUCCEEDED", 50)
    assert sorted(series(client, job["id"])["sparsity/0.weight"]) == list(range(5, 50, 5))


def test_the_lightning_callback_forwards_the_loss_and_logged_metrics(server, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "lightning_digits.py"), "--out", str(tmp_path), "--track", server.addr],
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.load(open(tmp_path / "result.json"))
    client = prune.Client(server.addr)
    job = client.job(result["run"])
    assert (job["state"], job["step"], job["total_steps"]) == ("SUCCEEDED", 90, 90)
    got = series(client, job["id"])
    assert sorted(got["loss"]) == list(range(10, 91, 10))  # every log_every_n_steps
    assert sorted(got["train_loss"]) == [45, 90]  # the epoch means, at each epoch's end
    # Every tensor's sparsity at every mask update: the 2:4 mask of net.0 is made at step 1.
    assert sorted(got["sparsity/net.2.weight"]) == [1, 10, 20, 30, 40, 50, 60]
    assert got["sparsity/net.0.weight"][60] == 0.5


def test_a_run_cancelled_on_the_service_stops_reporting_and_says_so(server):
    client = prune.Client(server.addr)
    pruner = prune.Pruner(mlp(hidden=8), PRUNING)
    run = client.track(pruner)
    pruner.step()
    assert run.flush(60) and not run.cancelled
    assert client.cancel(run.id)["state"] == "CANCELLED"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            pruner.step()
            run.log(loss=1.0)
        assert run.flush(60) is False
        pruner.step()
    assert run.cancelled and run.stopped.startswith("RUN_ENDED")
    tracking = [str(w.message) for w in caught if issubclass(w.category, prune.TrackingWarning)]
    assert len(tracking) == 1 and "was cancelled" in tracking[0], tracking
    assert client.job(run.id)["step"] == 1


def test_the_trainer_callback_forwards_what_the_trainer_logs(server):
    from types import SimpleNamespace

    client = prune.Client(server.addr)
    pruner = prune.Pruner(mlp(hidden=8), PRUNING)
    run = client.track(pruner)
    callback = prune.integrations.HuggingFaceCallback(pruner, run=run)
    callback.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=120), None)
    for _ in range(7):
        pruner.step()
    callback.on_log(None, SimpleNamespace(global_step=7), None, logs={"loss": 0.5, "learning_rate": 1e-3, "epoch": 1.5, "note": "text"})
    assert run.flush(60)
    job = client.job(run.id)
    assert (job["step"], job["total_steps"], job["epoch"], job["loss"]) == (7, 120, 1, 0.5)
    assert {p["name"]: (p["step"], p["value"]) for p in client.metrics(run.id)} == {"loss": (7, 0.5), "learning_rate": (7, 1e-3)}
    run.close()


def test_tls_needs_https_and_says_so(start_server):
    certs = os.path.join(HERE, "..", "..", "tests", "certs")
    s = start_server("--tls-cert", os.path.join(certs, "server.pem"), "--tls-key", os.path.join(certs, "server.key"))
    port = s.addr.rsplit(":", 1)[1]
    secure = prune.Client(f"https://localhost:{port}", ca=os.path.join(certs, "ca.pem"))
    assert secure.jobs() == []
    for plain in (s.addr, f"127.0.0.1:{port}"):
        with pytest.raises(prune.TrackingError, match=f"is a TLS server: use https://127.0.0.1:{port}"):
            prune.Client(plain).jobs()
