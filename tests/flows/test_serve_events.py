"""Retraining when new data lands: `aevb serve --on-new-data` against a real `prefect server start`
on 127.0.0.1 (slow). `aevb ingest` emits `aevb.dataset.published`; the deployment's
DeploymentEventTrigger makes the server start one run per new version, with that version as the
run's `dataset_version`; the same event sent again starts nothing, and a run asked for a version
already trained reuses that training (no new model version). Checked through the Prefect
API and the MLflow store. The fast tests check the trigger and the argument rules.
"""

from __future__ import annotations

import re
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
from tests.helpers import env

NAME = "on-new-data"


def test_the_trigger_watches_one_dataset_and_root_keyed_on_the_version():
    from flows.serve import build_deployment, deployment_parameters
    from tasks.ingest import EVENT_PUBLISHED

    plan = deployment_parameters(None, ["data.name=digits", "data.data_root='/srv/data'"])
    deployment = build_deployment("x", None, plan, on_new_data=True)
    (trigger,) = deployment.triggers
    assert trigger.expect == {EVENT_PUBLISHED} and trigger.for_each == {"aevb.dataset.version"}
    match = trigger.match.model_dump()
    assert match["prefect.resource.id"] == "aevb.dataset.digits"
    assert match["aevb.data_root"] == "/srv/data"
    assert trigger.parameters["dataset_version"] == "{{ event.resource['aevb.dataset.version'] }}"
    assert 'data.data_root="/srv/data"' in trigger.parameters["overrides"]
    assert build_deployment("x", None, plan).triggers == []  # only when asked


def test_the_event_id_is_one_per_version():
    from tasks.ingest import published_event
    from tasks.store.writer import IngestResult

    a = published_event("/d", IngestResult("digits", "v1", "/d/digits/v1", True))
    again = published_event("/d", IngestResult("digits", "v1", "/d/digits/v1", True))
    other = published_event("/d", IngestResult("digits", "v2", "/d/digits/v2", True))
    elsewhere = published_event("/e", IngestResult("digits", "v1", "/e/digits/v1", True))
    assert a["id"] == again["id"] and len({a["id"], other["id"], elsewhere["id"]}) == 3
    assert a["resource"]["aevb.dataset.version"] == "v1"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["serve"], "say when to retrain: --cron"),
        (["serve", "--on-new-data", "a", "--dataset-name", "b"], "name two datasets"),
    ],
)
def test_serve_needs_a_trigger_and_one_dataset(argv, needle, capsys):
    from flows.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("aevb serve: error: ") and needle in err


def _completed(url: str) -> list:
    runs = deployment_runs(url, NAME)[1]
    return [r for r in runs if r.state.type.value == "COMPLETED"]


def _ingest(tmp, url: str, *extra: str) -> str:
    done = subprocess.run(
        [*aevb_command(), "ingest", "digits", *extra],
        env=server_env(tmp, url), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new version" in done.stdout, done.stdout
    return re.search(r"version ([0-9a-f]+):", done.stdout).group(1)


def _resend(tmp, url: str, version: str) -> None:
    """The same `aevb.dataset.published` event again, from another process."""
    code = (
        "import sys; from tasks.ingest import emit_published; "
        "from tasks.store.roots import resolve_data_root; from tasks.store.writer import "
        "IngestResult as R; root = resolve_data_root(None); "
        "emit_published(root, R('digits', sys.argv[1], root + '/digits', True))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, version], env=server_env(tmp, url),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_each_published_version_retrains_once(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks import tracking

    with prefect_server(tmp_path / "server") as url:
        log = tmp_path / "serve.log"
        proc = subprocess.Popen(
            [*aevb_command(), "serve", "--on-new-data", "digits", "--name", NAME, *FAST,
             "pipeline.schedule_collisions=enqueue"],
            env=server_env(tmp_path, url, PREFECT_RUNNER_POLL_FREQUENCY="2"),
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
        )  # fmt: skip
        try:
            wait_for(lambda: "serving;" in log.read_text(), 300, "aevb serve", log=log)
            assert "no schedule; on new data" in log.read_text()
            v1 = _ingest(tmp_path, url)
            (first,) = wait_for(lambda: _completed(url), 600, "the triggered run", log=log)
            assert first.parameters["dataset_version"] == v1
            _resend(tmp_path, url, v1)  # a duplicate announcement of v1
            v2 = _ingest(tmp_path, url, "--split-seed", "1")
            wait_for(lambda: len(_completed(url)) >= 2, 600, "the run of v2", log=log)
            # v1 once more, asked by hand: the pipeline finds it trained and does not retrain.
            with temporary_settings(updates={PREFECT_API_URL: url}):
                with get_client(sync_client=True) as client:
                    deployment = client.read_deployment_by_name(f"aevb-retrain/{NAME}")
                    client.create_flow_run_from_deployment(
                        deployment.id, parameters={"dataset_version": v1}
                    )
            wait_for(lambda: len(_completed(url)) >= 3, 600, "the hand-started run", log=log)
            runs = deployment_runs(url, NAME)[1]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=180)
            finally:
                if proc.poll() is None:
                    proc.kill()
    by_version = sorted(r.parameters.get("dataset_version") for r in runs)
    assert by_version == sorted([v1, v1, v2]), [(r.parameters, r.state.name) for r in runs]
    assert all(r.state.type.value == "COMPLETED" for r in runs)
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp_path / "mlflow")):
        versions = tracking.list_versions("aevb-digits")
    trained = sorted(v.tags["aevb.dataset_version"] for v in versions)
    assert trained == sorted([v1, v2])  # one model version per data version, none twice
    # The hand-started v1 run reused the finished training (it may re-export v1's latent table).
    assert "train: reused the finished identical run" in log.read_text()
