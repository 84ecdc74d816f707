"""Prefect's temporary API server dies with the `aevb` process that started it, however it dies.

Processes are found through /proc: every process a test starts carries a unique environment tag,
which all its descendants inherit, so a surviving server is found even after it was reparented.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flows import prefect_api

REPO = Path(__file__).resolve().parent.parent.parent


def _alive_with(tag: str) -> dict[int, str]:
    """pid -> command line of every live (non-zombie) process whose environment holds ``tag``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if f"AEVB_TEST_TAG={tag}".encode() in environ and state != "Z":
            found[int(entry)] = cmdline
    return found


def _wait_gone(tag: str, timeout: float = 30.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    alive = _alive_with(tag)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = _alive_with(tag)
    return alive


def _env(tmp_path: Path, tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        AEVB_TEST_TAG=tag,
        AEVB_DATA_ROOT=str(tmp_path / "data"),
        AEVB_MLFLOW_DIR=str(tmp_path / "mlflow"),
        AEVB_MODEL_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=str(REPO),
    )
    return env


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_nothing_is_started_when_an_api_is_configured(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with prefect_api.serving(True) as server:
        assert server is None
    monkeypatch.delenv("PREFECT_API_URL")
    with prefect_api.serving(False) as server:
        assert server is None


@pytest.mark.slow
def test_sigkill_of_a_running_pipeline_leaves_no_process_behind(tmp_path):
    tag = uuid.uuid4().hex
    argv = [sys.executable, "-m", "flows.cli", "pipeline", "digits", "train.epochs=500",
            "train.patience=0", "model.hidden_sizes=[16]"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, env=_env(tmp_path, tag), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:

        def training() -> bool:
            return (tmp_path / "data" / "checkpoints").is_dir()

        _wait_for(training, proc, 600, "training started")
        before = _alive_with(tag)
        servers = [pid for pid, cmd in before.items() if prefect_api.CHILD_MARK in cmd]
        assert proc.pid in before and servers, f"expected the pipeline and its server: {before}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        left = _wait_gone(tag)
        assert left == {}, f"processes survived the SIGKILL of the pipeline: {left}"
    finally:
        for pid in _alive_with(tag):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_command_that_ends_normally_or_with_an_error_stops_its_server(tmp_path):
    tag = uuid.uuid4().hex
    env = _env(tmp_path, tag)
    # A PREFECT_HOME whose parents do not exist yet: Prefect alone makes only the last folder.
    env["PREFECT_HOME"] = str(tmp_path / "new" / "place" / "prefect")
    ok = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", "digits"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "Failed to create the Prefect home" not in ok.stderr, ok.stderr[-2000:]
    assert (tmp_path / "new" / "place" / "prefect" / "prefect.db").is_file()
    assert _wait_gone(tag, 5) == {}
    # A user error found inside the flow (one row: too few for the splits) stops it as well.
    (tmp_path / "one.csv").write_text("a,b\n1,2\n")
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(tmp_path / "one.csv")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2, bad.stderr[-2000:]
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("aevb ingest: error:")]
    assert len(errors) == 1 and "1 rows are too few" in errors[0] and "Traceback" not in bad.stderr
    assert _wait_gone(tag, 5) == {}


_HOLDER = """
import sys, threading, time
from flows.prefect_api import TemporaryServer
server = TemporaryServer()
if sys.argv[1] == "thread":  # no death signal: only the pipe and parent-pid watch remain
    t = threading.Thread(target=server.start); t.start(); t.join()
else:
    server.start()
server.wait_ready()
print(server.url, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_the_server_dies_with_its_parent_by_death_signal_or_by_its_watch(tmp_path, started_from):
    """From the main thread the kernel's death signal kills it; started from another thread (the
    signal would follow that thread) the child's watch of the parent's pipe stops it."""
    import urllib.request

    tag = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, started_from], cwd=REPO,
                            env=_env(tmp_path, tag), stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert response.status == 200
        server = [pid for pid, cmd in _alive_with(tag).items() if prefect_api.CHILD_MARK in cmd]
        assert len(server) == 1
        flag = Path(f"/proc/{server[0]}/cmdline").read_bytes().split(b"\0")[-2]
        assert flag == (b"1" if started_from == "main" else b"0")  # death signal armed or not
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait_gone(tag, 15) == {}
    finally:
        for pid in _alive_with(tag):
            os.kill(pid, signal.SIGKILL)
