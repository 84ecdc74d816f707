"""Small helpers the tests share: temporary environment variables, a free loopback port, and
stopping a server started in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def env(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block; restore them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session=True), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start_prefect_server(
    home: str, port: int, log_path: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:``port`` with its own PREFECT_HOME, in its own process
    group (stop it with `stop_group`); returns once `/api/health` answers (pytest.fail otherwise)."""
    import sys
    import time

    import httpx
    import pytest

    env = {
        **os.environ,
        "PREFECT_HOME": home,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        **(extra_env or {}),
    }
    for key in ("PREFECT_API_URL", "PREFECT_RESULTS_LOCAL_STORAGE_PATH"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            with open(log_path) as fh:
                pytest.fail(f"prefect server did not start:\n{fh.read()[-3000:]}")
        time.sleep(0.5)
