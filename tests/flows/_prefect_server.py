"""A real `prefect server start` on a free loopback port for the scheduling tests, the environment
of the processes that talk to it, and small process/API probes (Linux /proc, the Prefect client).

The server runs in its own process group with its own PREFECT_HOME; the test process talks to it
only inside `temporary_settings`, so the session's test harness is untouched.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, stop_group

REPO = Path(__file__).resolve().parents[2]
# A pipeline run small enough for CI; SLOW trains long enough to overlap many schedule ticks.
FAST = [
    "train.epochs=1",
    "train.jit_compile=false",
    "model.hidden_sizes=[16]",
    "model.latent_dim=2",
    "evaluate.num_samples=8",
    "export.splits=['test']",
]
SLOW = [*FAST[1:], "train.epochs=5000", "train.patience=0"]


def server_env(tmp: Path, api_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "AEVB_MLFLOW_DIR": str(tmp / "mlflow"),
        "AEVB_DATA_ROOT": str(tmp / "data"),
        "PYTHONPATH": str(REPO),
        **extra,
    }
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_RESULTS_LOCAL_STORAGE_PATH"):
        env.pop(key, None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@contextlib.contextmanager
def prefect_server(tmp: Path) -> Iterator[str]:
    """Start `prefect server start` on 127.0.0.1; yields its API URL; stops it afterwards."""
    import httpx

    tmp.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{free_port()}/api"
    port = url.rsplit(":", 1)[1].split("/")[0]
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", port],
            env=server_env(tmp, None), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"prefect server did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
            yield url
        finally:
            stop_group(proc)


def aevb_command() -> list[str]:
    """`aevb` as users start it: the console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("aevb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def deployment_runs(api_url: str, deployment_name: str) -> tuple[object, list]:
    """The deployment of `retrain_flow` and its flow runs, through the Prefect API ((None, [])
    while it is not registered yet)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            try:
                deployment = client.read_deployment_by_name(f"aevb-retrain/{deployment_name}")
            except ObjectNotFound:
                return None, []
            only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            return deployment, client.read_flow_runs(deployment_filter=only, limit=200)


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0, log: Path | None = None):
    """Poll ``predicate()`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tail}")
