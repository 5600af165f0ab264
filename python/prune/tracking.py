"""Tracked runs: the service shows a loop you run yourself like one of its own jobs.

    client = prune.Client("http://prune:50051", token=...)
    with client.track(pruner, name="digits", request_id="digits-1") as run:
        for x, y in loader:
            pruner.step()                 # the step, and the sparsity at every mask update
            ...
            run.log(loss=loss.item())     # any scalar
    # leaving the block uploads the final weights; the service exports them (run.finish)

The client is `prune-client`, the service's own Rust client, inside `prune._core` (auth, TLS,
retries, resumable uploads). Reports go out from a background thread: `log()` and
`pruner.step()` never wait on the network and never raise because of it; a server that is down
costs the reports it drops, with one warning. See docs/python.md, "Tracked runs".
"""

from __future__ import annotations

import atexit
import json
import math
import numbers
import os
import tempfile
import warnings
import weakref
from typing import Any, Dict, List, Mapping, Optional

import torch

from . import _core
from ._core import TrackingError

__all__ = ["Client", "Run", "TrackingError", "TrackingWarning"]

# How long finishing, failing or exiting waits for reports queued before it.
_FLUSH_SECONDS = 10.0
# Steps between two looks at the reporter's status (a mask update or a log() always looks).
_POLL_EVERY = 64


class TrackingWarning(UserWarning):
    """Reports that did not reach the service (dropped after retries), or a run the service no
    longer takes reports for (cancelled, superseded by a re-attached loop)."""


def _rank() -> int:
    """This process's rank under torch.distributed (torchrun's RANK before it is initialised)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class Client:
    """A connection to a prune server: `addr` as `http://host:port` or `https://host:port` (a
    bare `host:port` is plain HTTP), `token` sent as `authorization: Bearer <token>`, `ca` the
    PEM file of the authority that signed the server's TLS certificate (default: the system's
    roots), `timeout` seconds per call (default 60). As `prunectl --addr/--token/--ca-cert`.
    Raises TrackingError when the server cannot be reached."""

    def __init__(self, addr: str, token: Optional[str] = None, *, ca: Optional[str] = None, timeout: Optional[float] = None):
        self._core = _core.ServiceClient(str(addr), token, None if ca is None else os.fspath(ca), timeout)

    @property
    def addr(self) -> str:
        return self._core.addr

    def track(
        self,
        pruner: Any,
        name: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        request_id: Optional[str] = None,
        total_steps: Optional[int] = None,
        export: Optional[Mapping[str, Any]] = None,
        *,
        heartbeat: Optional[float] = None,
    ) -> "Run":
        """Starts a tracked run of `pruner`'s loop: a job of kind TRACKED, RUNNING while the loop
        reports. `export` is the job file's `[export]` table (e.g. `{"sparse_format": "bitmask"}`),
        `total_steps` defaults to the pruner's. With the `request_id` of an earlier start of the
        same run (same table, name and labels), a restarted loop re-attaches to it
        (`run.reattached`). Under torch.distributed only rank 0 reports: other ranks get a run
        whose methods do nothing.

        The table is checked first as the service checks it (`prune.SpecError` naming the
        field); the server's own refusals raise SpecError or TrackingError."""
        if _rank() != 0:
            return _NullRun(pruner)
        spec = _core.tracked_spec(
            pruner._spec.canonical, name, None if export is None else json.dumps(dict(export), allow_nan=False)
        )
        if labels is not None:
            labels = {str(k): str(v) for k, v in labels.items()}
        if total_steps is None:
            total_steps = getattr(pruner, "_total_steps", None)
        core = self._core.start_tracked_run(spec, request_id, labels, total_steps, heartbeat)
        return Run(core, pruner, self.addr)

    # -- reading jobs (any kind) ----------------------------------------------------------------

    def job(self, job_id: str) -> Dict[str, Any]:
        """The job as `prunectl status --json` shows it."""
        return json.loads(self._core.job(job_id))

    def jobs(self, filter: str = "") -> List[Dict[str, Any]]:
        """Jobs newest first (without their specs) that pass an AIP-160 `filter`, e.g.
        `labels.team = "vision" AND state = RUNNING` (`prunectl list --filter`)."""
        return json.loads(self._core.jobs(filter))

    def metrics(self, job_id: str, prefix: Optional[str] = None) -> List[Dict[str, Any]]:
        """The job's time series: [{"name", "step", "value"}], by name then step."""
        return [{"name": n, "step": s, "value": v} for n, s, v in self._core.metrics(job_id, prefix)]

    def report(self, job_id: str) -> Dict[str, Any]:
        """A SUCCEEDED job's report: per-tensor table, sizes."""
        return json.loads(self._core.report(job_id))

    def download(self, job_id: str, path: str, format: Optional[str] = None, raw: bool = False) -> Dict[str, Any]:
        """The job's artifact (default: its model) at `path`, decompressed unless `raw`
        (`prunectl download`); `prune.load(path)` reads it."""
        return json.loads(self._core.download(job_id, os.fspath(path), format, raw))

    def wait(self, job_id: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The job once it is SUCCEEDED, FAILED or CANCELLED (TrackingError after `timeout` s)."""
        return json.loads(self._core.wait(job_id, timeout))

    def cancel(self, job_id: str) -> Dict[str, Any]:
        return json.loads(self._core.cancel(job_id))

    def __repr__(self) -> str:
        return f"prune.Client({self.addr!r})"


# Runs that still report, so that their last reports go out when the interpreter exits.
_OPEN: "weakref.WeakSet[Run]" = weakref.WeakSet()


@atexit.register
def _flush_open_runs() -> None:
    for run in list(_OPEN):
        run.close()


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"run.log: `{name}` is a tensor of {value.numel()} elements, not a scalar")
        return float(value.detach().item())
    if not isinstance(value, numbers.Real) and not hasattr(value, "__float__"):
        raise TypeError(f"run.log: `{name}` is a {type(value).__name__}, not a number")
    return float(value)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or not name.isprintable():
        raise ValueError(f"run.log: metric name {name!r}: give 1 to 200 printable characters")
    return name


class Run:
    """A tracked run (from `Client.track`). `id` is its job id; `session` the reporting session
    (a re-attach opens a new one); `reattached` whether this start continued an earlier one.

    The pruner reports to it by itself: every `pruner.step()` the step (coalesced), every mask
    update the per-tensor sparsity and `sparsity/<name>` points at that step."""

    def __init__(self, core: Any, pruner: Any, addr: str):
        self._core = core
        self._pruner = pruner
        self._addr = addr
        self._ended = False
        self._warned_drop = False
        self._warned_stop = False
        self._warned_nonfinite = False
        self._since_poll = 0
        self.job: Dict[str, Any] = json.loads(core.job)
        pruner._listeners.append(self._on_pruner)
        # A resumed loop's pruner is ahead of (or behind) what the service recorded.
        core.step(pruner.step_count)
        _OPEN.add(self)

    @property
    def id(self) -> str:
        return self._core.job_id

    @property
    def session(self) -> int:
        return self._core.session

    @property
    def reattached(self) -> bool:
        return self._core.reattached

    @property
    def start_step(self) -> int:
        """The last step the service had recorded when this session started (a re-attach)."""
        return self._core.start_step

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled on the service (`prunectl cancel`, the dashboard): its
        reports are refused from then on. Known at the next report."""
        status = self._core.status() or self._last_status
        state = status[4] if status is not None else None
        return (state or self._stopped_state) == "CANCELLED"

    # The state the run stopped in and the reporter's last status, kept once it is gone.
    _stopped_state: Optional[str] = None
    _last_status: Optional[tuple] = None

    @property
    def stopped(self) -> Optional[str]:
        """Why the service no longer takes this session's reports (`RUN_ENDED: ...`,
        `RUN_SUPERSEDED: ...`), or None."""
        status = self._core.status() or self._last_status
        if status is None or status[3] is None:
            return None
        return f"{status[3]}: {status[5]}"

    @property
    def dropped(self) -> int:
        """Metric points (and updates) that did not reach the service."""
        status = self._core.status() or self._last_status
        return 0 if status is None else status[1]

    # -- reporting ------------------------------------------------------------------------------

    def log(self, step: Optional[int] = None, values: Optional[Mapping[str, Any]] = None, **scalars: Any) -> None:
        """Scalars at `step` (default: the pruner's step count): `run.log(loss=0.3,
        accuracy=0.9)`, or a dict for names that are not identifiers (`run.log(None,
        {"val/loss": 0.4})`). Tensors of one element and numbers are taken; None is skipped; NaN
        and infinities are not reported (one warning). A point at a step already reported
        replaces it. Returns at once: the values go out with the next report."""
        if step is None:
            step = self._pruner.step_count
        items = dict(values or {})
        items.update(scalars)
        points = []
        for name, value in items.items():
            if value is None:
                continue
            v = _scalar(_check_name(name), value)
            if not math.isfinite(v):
                if not self._warned_nonfinite:
                    self._warned_nonfinite = True
                    warnings.warn(f"run {self.id}: `{name}` is {v} at step {step}: not reported (nor later non-finite values)", TrackingWarning, stacklevel=2)
                continue
            points.append((name, v))
        self._core.log(int(step), points)
        self._poll()

    @property
    def epoch(self) -> None:
        raise AttributeError("Run.epoch is write-only: the service's job has the latest")

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._core.epoch(int(epoch))

    def set_total_steps(self, total_steps: int) -> None:
        self._core.total_steps(int(total_steps))

    def flush(self, timeout: float = _FLUSH_SECONDS) -> bool:
        """Waits until everything logged so far has reached the service, at most `timeout`
        seconds. False when something was dropped, the run stopped taking reports, or time ran
        out (never raises)."""
        done = self._core.flush(float(timeout))
        self._poll(force=True)
        return done

    def _on_pruner(self, pruner: Any, updated: bool) -> None:
        step = pruner.step_count
        self._core.step(step)
        if updated:
            self._core.sparsity(step, list(pruner.sparsity().items()))
            self._poll(force=True)
        else:
            self._poll()

    def _poll(self, force: bool = False) -> None:
        """Warns once when reports were dropped, once when the run stopped taking them."""
        self._since_poll += 1
        if not force and self._since_poll < _POLL_EVERY:
            return
        self._since_poll = 0
        status = self._core.status()
        if status is not None:
            self._warn(status)

    def _warn(self, status: tuple) -> None:
        self._last_status = status
        _reports, dropped, last_error, stop_reason, stop_state, stop_message = status
        if stop_reason is not None:
            self._stopped_state = stop_state
            if not self._warned_stop:
                self._warned_stop = True
                what = "was cancelled" if stop_state == "CANCELLED" else f"no longer takes this session's reports ({stop_reason})"
                warnings.warn(f"run {self.id} {what}: {stop_message}; the loop goes on, unreported", TrackingWarning, stacklevel=4)
        elif dropped and not self._warned_drop:
            self._warned_drop = True
            warnings.warn(
                f"run {self.id}: reports to {self._addr} are being dropped after retries ({last_error}); "
                "the loop goes on, and reporting resumes when the server answers again",
                TrackingWarning,
                stacklevel=4,
            )

    # -- ending ---------------------------------------------------------------------------------

    def _end(self) -> None:
        self._ended = True
        if self._on_pruner in self._pruner._listeners:
            self._pruner._listeners.remove(self._on_pruner)
        _OPEN.discard(self)

    def _check_open(self, what: str) -> None:
        if self._ended:
            raise TrackingError(f"run {self.id}: {what}() after the run was finished, failed or closed")

    def finish(self, model: Any = None, *, wait: bool = True, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The loop is done: the model's weights with the masks applied (`model`, a module or a
        state dict; default the pruner's model) are written as a plain safetensors file,
        uploaded (resumable) and exported by the service as its own jobs are (the `[export]`
        given to `track`, the report's per-tensor table and sizes). With `wait`, returns once the
        job SUCCEEDED (TrackingError if the export failed, or after `timeout` seconds); else at
        once with the job QUEUED for its export. Returns the job."""
        from . import export

        self._check_open("finish")
        target = self._pruner._model if model is None else model
        with tempfile.TemporaryDirectory(prefix="prune-run-") as folder:
            path = os.path.join(folder, "model.safetensors")
            try:
                export(target, path, format="dense", compression="none")
            except Exception as e:
                raise TrackingError(f"run {self.id}: the final weights could not be written: {e}") from e
            job_json, status = self._core.finish(path, wait, timeout)
        self._end()
        if status is not None:
            self._warn(status)
        job = json.loads(job_json)
        if wait and job["state"] != "SUCCEEDED":
            raise TrackingError(f"run {self.id} ended {job['state']}: {job.get('error') or 'no error given'}")
        return job

    def fail(self, reason: str) -> Dict[str, Any]:
        """The loop failed: the job becomes FAILED with `reason` (its first line). Returns the job."""
        self._check_open("fail")
        lines = str(reason).strip().splitlines() or ["failed"]
        job = json.loads(self._core.fail(lines[0][:2000]))
        self._end()
        return job

    def close(self) -> None:
        """Stops reporting (what was logged is sent first, for up to 10 s) without ending the run:
        it stays RUNNING until the service's tracked timeout fails it, or a loop re-attaches."""
        if self._ended:
            return
        status = self._core.close(_FLUSH_SECONDS)
        self._end()
        if status is not None:
            self._warn(status)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """An exception fails the run with its message (and goes on); a normal exit finishes it."""
        if self._ended:
            return False
        if exc is not None:
            try:
                self.fail(f"{exc_type.__name__}: {exc}")
            except Exception as e:  # the loop's own exception matters more
                warnings.warn(f"run {self.id}: could not be failed: {e}", TrackingWarning, stacklevel=2)
            return False
        self.finish()
        return False

    def __repr__(self) -> str:
        return f"prune.Run({self.id!r}, session={self.session}, reattached={self.reattached})"


class _NullRun:
    """What ranks other than 0 get under torch.distributed: the same methods, doing nothing."""

    id = None
    session = 0
    reattached = False
    start_step = 0
    cancelled = False
    stopped = None
    dropped = 0
    job: Dict[str, Any] = {}

    def __init__(self, pruner: Any):
        self._pruner = pruner

    def log(self, step: Optional[int] = None, values: Optional[Mapping[str, Any]] = None, **scalars: Any) -> None:
        pass

    epoch = property(lambda self: None, lambda self, value: None)

    def set_total_steps(self, total_steps: int) -> None:
        pass

    def flush(self, timeout: float = _FLUSH_SECONDS) -> bool:
        return True

    def finish(self, model: Any = None, *, wait: bool = True, timeout: Optional[float] = None) -> None:
        return None

    def fail(self, reason: str) -> None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NullRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False

    def __repr__(self) -> str:
        return f"prune.Run(None: rank {_rank()} does not report)"
