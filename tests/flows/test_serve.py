"""`aevb serve`: argument checks (fast) and scheduled retraining against a real `prefect server
start` on 127.0.0.1 (slow): the cron deployment is registered, the server schedules runs at the
cron's dates, and a scheduled run created from the deployment executes and registers a model.

The real server runs in its own process with its own PREFECT_HOME; this process talks to it only
inside `temporary_settings`, so the session's test harness is untouched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from models.errors import ConfigError, PipelineError

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "train.epochs=1",
    "train.jit_compile=false",
    "model.hidden_sizes=[16]",
    "model.latent_dim=2",
    "evaluate.num_samples=8",
    "export.splits=['test']",
]


def test_cron_and_interval_schedules_are_validated():
    from flows.serve import make_schedule

    assert make_schedule("0 3 * * *", None).cron == "0 3 * * *"
    assert make_schedule(None, 3600).interval == timedelta(hours=1)
    with pytest.raises(ConfigError, match=r"--cron 'every day'.*not a valid schedule"):
        make_schedule("every day", None)
    with pytest.raises(ConfigError, match=r"--timezone 'Mars/Olympus'"):
        make_schedule("0 3 * * *", None, "Mars/Olympus")
    with pytest.raises(ConfigError, match=r"--interval 0"):
        make_schedule(None, 0)


def test_serve_refuses_without_a_reachable_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import check_server

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(PipelineError, match=r"cannot schedule.*prefect server start"):
            check_server()
    port = _free_port()  # nothing listens there
    with pytest.raises(PipelineError, match=rf"127.0.0.1:{port}/api: no healthy Prefect server"):
        check_server(f"http://127.0.0.1:{port}/api", timeout=2)


def test_serve_validates_the_config_before_registering(capsys):
    from flows.cli import main

    rc = main(["serve", "--cron", "0 3 * * *", "train.epochs=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "train.epochs=0" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, api_url: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "AEVB_MLFLOW_DIR": str(tmp / "mlflow"),
        "PYTHONPATH": str(REPO),
    }
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_RESULTS_LOCAL_STORAGE_PATH"):
        env.pop(key, None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@pytest.fixture()
def prefect_server(tmp_path):
    """`prefect server start` on a free loopback port with a temp home; stopped afterwards."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         str(port)],
        env=_env(tmp_path, None), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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
                log.flush()
                pytest.fail(
                    f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(1)
        print("TIMING server up", time.monotonic() - deadline + 180, flush=True)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    out = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_scheduled_retraining_on_a_real_server(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.server.schemas.schedules import CronSchedule as ServerCron
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    T0 = time.monotonic()
    env = _env(tmp_path, prefect_server)
    root = str(tmp_path / "data")
    out = _run(
        [sys.executable, "-m", "flows.cli", "serve", "--cron", "0 3 * * *", "--register-only",
         "digits", "--data-root", root, *FAST],
        env, timeout=300,
    )  # fmt: skip
    print("TIMING serve", time.monotonic() - T0, flush=True)
    assert "aevb-retrain/scheduled-retraining" in out and "cron '0 3 * * *' (UTC)" in out

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("aevb-retrain/scheduled-retraining")
            assert deployment.entrypoint == "flows.pipeline.retrain_flow"
            assert deployment.parameters["overrides"][-len(FAST) :] == FAST
            (schedule,) = [s.schedule for s in deployment.schedules]
            assert schedule.cron == "0 3 * * *" and schedule.timezone == "UTC"
            # The cron's next dates: 03:00 UTC on consecutive days, starting within 24 h.
            now = datetime.now(timezone.utc)
            server_cron = ServerCron(cron=schedule.cron, timezone=schedule.timezone)
            dates = [d.astimezone(timezone.utc) for d in asyncio.run(server_cron.get_dates(3, now))]
            assert all((d.hour, d.minute, d.second) == (3, 0, 0) for d in dates)
            assert [b - a for a, b in zip(dates, dates[1:], strict=False)] == [
                timedelta(days=1)
            ] * 2
            assert now < dates[0] <= now + timedelta(days=1)
            # The server's scheduler creates those runs (it does not on an ephemeral API, nor with
            # sqlalchemy 2.1): poll for them.
            only_ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            deadline, auto = time.monotonic() + 120, []
            while not auto and time.monotonic() < deadline:
                auto = client.read_flow_runs(deployment_filter=only_ours)
                time.sleep(2)
            print("TIMING auto", time.monotonic() - T0, flush=True)
            starts = sorted(r.expected_start_time.astimezone(timezone.utc) for r in auto)
            assert starts and starts[0] == dates[0]
            assert all((s.hour, s.minute) == (3, 0) for s in starts)
            # Deterministic execution: a run scheduled for now, executed by the flow engine.
            run = client.create_flow_run_from_deployment(
                deployment.id, state=Scheduled(scheduled_time=now)
            )
        _run([sys.executable, "-m", "prefect", "flow-run", "execute", str(run.id)], env, 900)
        print("TIMING exec", time.monotonic() - T0, flush=True)
        with get_client(sync_client=True) as client:
            finished = client.read_flow_run(run.id)
            artifacts = client.read_artifacts()
    assert finished.state.is_completed(), finished.state
    assert any(a.key == "aevb-digits-summary" and a.flow_run_id == run.id for a in artifacts)
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(
        "name = 'aevb-digits'"
    )
    assert [int(v.version) for v in versions] == [1]
    assert versions[0].tags["aevb.dataset_version"]  # trained on the ingested version
