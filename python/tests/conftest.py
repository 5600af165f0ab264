import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples", "python")
GOLDEN = os.path.join(ROOT, "tests", "golden")
sys.path.insert(0, EXAMPLES)


@pytest.fixture
def root():
    return ROOT


# -- a real prune-server for the tracked-run tests ----------------------------------------------

import queue  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

# How long a server may take to start listening (a busy machine, a cold SQLite).
START_TIMEOUT = 60


def cargo_binary(name):
    """`PRUNE_<NAME>` (e.g. PRUNE_SERVER for prune-server), else the debug build that
    `make python-test` makes: under `$CARGO_TARGET_DIR`, else `target/`."""
    explicit = os.environ.get("PRUNE_" + name.removeprefix("prune-").upper())
    if explicit:
        return explicit
    candidates = [os.path.join(ROOT, "target", "debug", name)]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.insert(0, os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", name))
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is None:
        pytest.fail(f"{name} not found in {candidates}: build it with `cargo build -p prune-server -p prune-worker`")
    return found


class Lines:
    """A child's stdout, line by line, with a deadline on every wait (a reader thread)."""

    def __init__(self, stream):
        self._queue = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, prefix, timeout):
        """The rest of the first line starting with `prefix`; fails at EOF or the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no line starting {prefix!r} within {timeout} s; seen: {self.seen[-20:]}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the process ended before a line starting {prefix!r}; seen: {self.seen[-20:]}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line[len(prefix):]


class Server:
    """`prune-server` on 127.0.0.1:0 with a data directory of its own (as
    tests/service_support.rs starts it); its log in `<data_dir>.log`."""

    def __init__(self, data_dir, *args):
        self.data_dir = str(data_dir)
        self.log_path = self.data_dir + ".log"
        env = {**os.environ, "RUST_LOG": "info"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [cargo_binary("prune-server"), "--listen", "127.0.0.1:0", "--data-dir", self.data_dir, *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                start_new_session=True,  # its workers with it: stopped as a group
            )
        self.addr = "http://" + Lines(self.process.stdout).wait_for("listening on ", START_TIMEOUT)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-5000:]

    def kill(self):
        """SIGKILL to the server and its workers: nothing is cleaned up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for a test module (runs do not share ids)."""
    s = Server(tmp_path_factory.mktemp("server") / "data")
    yield s
    s.stop()


@pytest.fixture
def start_server(tmp_path):
    """Starts servers of the test's own (extra arguments), stopped at teardown."""
    started = []

    def start(*args):
        s = Server(tmp_path / f"server{len(started)}", *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
