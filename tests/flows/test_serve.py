"""`aevb serve`: argument checks (fast) and scheduled retraining against a real `prefect server
start` on 127.0.0.1 (slow): the cron deployment is registered, the server schedules runs at the
cron's dates, and a scheduled run created from the deployment executes and registers a model.

The real server runs in its own process with its own PREFECT_HOME; this process talks to it only
inside `temporary_settings`, so the session's test harness is untouched.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from models.errors import ConfigError, PipelineError
from tests.flows._prefect_server import FAST, REPO, server_env
from tests.flows._prefect_server import prefect_server as start_prefect_server
from tests.helpers import free_port


def test_cron_and_interval_schedules_are_validated():
    from flows.serve import make_schedule

    assert make_schedule("0 3 * * *", None).cron == "0 3 * * *"
    assert make_schedule("@daily", None).cron == "@daily"
    assert make_schedule(None, 3600).interval == timedelta(hours=1)
    with pytest.raises(ConfigError, match=r"--cron 'every day' is not a valid schedule"):
        make_schedule("every day", None)
    with pytest.raises(ConfigError, match=r"--timezone 'Mars/Olympus' is not an IANA time zone"):
        make_schedule("0 3 * * *", None, "Mars/Olympus")
    with pytest.raises(ConfigError, match=r"--interval 0"):
        make_schedule(None, 0)


@pytest.mark.parametrize(
    "cron, reason",
    [
        ("every day", "has 2 field(s); a cron needs 5: minute hour day-of-month month day-of-week"),
        ("61 * * * *", "minute field '61' is not valid"),
        ("0 25 * * *", "hour field '25' is not valid"),
        ("0 3 * * mon-fry", "day-of-week field 'mon-fry' is not valid"),
        ("0 3 30 2 *", "no date ever matches it"),
        ("H 3 * * *", "minute field 'H': random (R) and hashed (H) values are not supported"),
    ],
)
def test_a_bad_cron_prints_the_reason_in_one_line(cron, reason, capsys):
    from flows.cli import main

    rc = main(["serve", "--cron", cron, "--register-only"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert err.startswith(f"aevb serve: error: --cron {cron!r} is not a valid schedule: {reason}")
    assert "pydantic" not in err and "http" not in err


def test_schedule_collisions_setting_is_validated_and_becomes_the_limit():
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from flows.config import load_config
    from flows.serve import concurrency_limit, deployment_parameters

    assert load_config().pipeline.schedule_collisions == "cancel_new"
    with pytest.raises(ConfigError, match=r"pipeline.schedule_collisions='drop'.*'enqueue'"):
        load_config(overrides=["pipeline.schedule_collisions=drop"])
    plan = deployment_parameters(None, ["pipeline.schedule_collisions=enqueue"])
    assert plan.collisions == "enqueue"
    assert plan.parameters == {
        "config_file": None,
        "overrides": ["pipeline.schedule_collisions=enqueue"],
    }
    limit = concurrency_limit(plan.collisions)
    assert (limit.limit, limit.collision_strategy) == (1, ConcurrencyLimitStrategy.ENQUEUE)
    assert concurrency_limit("cancel_new").collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW


def test_serve_refuses_without_a_reachable_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import check_server

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(PipelineError, match=r"cannot schedule.*prefect server start"):
            check_server()
    port = free_port()  # nothing listens there
    with pytest.raises(PipelineError, match=rf"127.0.0.1:{port}/api: no healthy Prefect server"):
        check_server(f"http://127.0.0.1:{port}/api", timeout=2)


def test_serve_validates_the_config_before_registering(capsys):
    from flows.cli import main

    rc = main(["serve", "--cron", "0 3 * * *", "train.epochs=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "train.epochs=0" in err


@pytest.fixture()
def prefect_server(tmp_path):
    """`prefect server start` on a free loopback port with a temp home; stopped afterwards."""
    with start_prefect_server(tmp_path) as url:
        yield url


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
    env = server_env(tmp_path, prefect_server)
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
