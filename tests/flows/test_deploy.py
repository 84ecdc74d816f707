"""`aevb deploy`: the scheduled retraining deployment on a process work pool, executed by a real
`prefect worker start --pool ...` against a real `prefect server start` on 127.0.0.1 (slow): a
scheduled run is picked up by the worker and registers a new model version in MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.flows._prefect_server import (
    FAST,
    aevb_command,
    deployment_runs,
    prefect_server,
    server_env,
    wait_for,
)


def test_deploy_refuses_without_a_server(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    with temporary_settings(updates={PREFECT_API_URL: None}):
        rc = main(["deploy", "--pool", "aevb", "--cron", "0 3 * * *"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "prefect server start" in err


def _completed(url: str, name: str):
    runs = deployment_runs(url, name)[1]
    return [r for r in runs if r.state.type.value == "COMPLETED" and r.auto_scheduled]


@pytest.mark.slow
def test_a_worker_runs_the_scheduled_retraining_and_a_model_version_appears(tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_server(tmp_path / "server") as url:
        env = server_env(tmp_path, url, PREFECT_WORKER_QUERY_SECONDS="2")
        deploy = subprocess.run(
            [*aevb_command(), "deploy", "--pool", "aevb-test", "--interval", "10",
             "--name", "pooled", "digits", *FAST],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stderr[-3000:]
        assert "created process work pool 'aevb-test'" in deploy.stdout
        assert "prefect worker start --pool aevb-test" in deploy.stdout
        deployment, runs = deployment_runs(url, "pooled")
        assert deployment.work_pool_name == "aevb-test"
        assert deployment.entrypoint == "flows.pipeline.retrain_flow"
        assert deployment.global_concurrency_limit.limit == 1
        assert not [r for r in runs if r.state.type.value in ("RUNNING", "COMPLETED")]

        log = tmp_path / "worker.log"
        worker = subprocess.Popen(  # from another folder: the entrypoint is a module path
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "aevb-test"],
            env=env, cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True,
        )  # fmt: skip
        try:
            (done, *_) = wait_for(lambda: _completed(url, "pooled"), 600, "a completed run", 2, log)
        finally:
            worker.send_signal(signal.SIGINT)  # Prefect's worker: 1st SIGINT drains, 2nd kills
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        assert done.work_pool_name == "aevb-test" and done.deployment_id == deployment.id
        assert "Worker" in log.read_text() and str(done.id) in log.read_text()

        # The same deployment again, against a pool of another type: refused in one line.
        with temporary_settings(updates={PREFECT_API_URL: url}):
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name="not-process", type="kubernetes"))
        wrong = subprocess.run(
            [*aevb_command(), "deploy", "--pool", "not-process", "--interval", "10", *FAST],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0, wrong.stderr
        assert "'kubernetes' work pool" in wrong.stderr and "--type process" in wrong.stderr

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(
        "name = 'aevb-digits'"
    )
    assert [int(v.version) for v in versions] == [1]
    assert versions[0].tags["aevb.dataset_version"]
