"""MLflow tracking against a real temporary SQLite store: where things land, what a run holds,
and what happens when a tracking server cannot be reached."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from models import constants as C
from models.errors import TrackingError
from tasks import plots, tracking
from tasks.store import roots
from tests.tasks._mlflow_helpers import write_dataset

TINY_TRAIN = {"epochs": 2, "batch_size": 40, "jit_compile": False, "seed": 3}


# -- where the store and the artifacts are ------------------------------------------------------
def _log_one_artifact(tmp_path: Path, experiment: str) -> str:
    run_id = tracking.start_run(experiment, "artifact-probe")
    probe = tmp_path / "probe.txt"
    probe.write_text("hello")
    tracking.log_artifact(run_id, str(probe))
    tracking.end_run(run_id)
    return run_id


def test_default_store_is_sqlite_under_the_mlflow_dir_with_artifacts_beside_it(
    mlflow_store, tmp_path, monkeypatch
):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert tracking.tracking_uri() == f"sqlite:///{mlflow_store / 'mlflow.db'}"
    run_id = _log_one_artifact(tmp_path, "aevb-probe")
    exp = tracking.client().get_experiment_by_name("aevb-probe")
    assert exp.artifact_location == (mlflow_store / "artifacts" / "aevb-probe").as_uri()
    logged = list((mlflow_store / "artifacts" / "aevb-probe").rglob("probe.txt"))
    assert len(logged) == 1 and run_id in str(logged[0])
    assert list(cwd.iterdir()) == []  # no ./mlruns, no ./mlflow.db


def test_an_explicit_sqlite_uri_also_gets_an_explicit_artifact_folder(tmp_path, monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    db = tmp_path / "team" / "store.db"
    db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    _log_one_artifact(tmp_path, "aevb-explicit")
    assert len(list((db.parent / "artifacts" / "aevb-explicit").rglob("probe.txt"))) == 1
    assert list(cwd.iterdir()) == []


def test_the_default_store_follows_aevb_mlflow_dir_and_never_leaks_into_the_environment(
    tmp_path, monkeypatch
):
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; if that stayed, the first store used
    # in a process would shadow every later AEVB_MLFLOW_DIR (and every child process's default).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a", "b"):
        monkeypatch.setenv("AEVB_MLFLOW_DIR", str(tmp_path / name))
        c = tracking.client()
        assert c.tracking_uri == f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        assert "MLFLOW_TRACKING_URI" not in os.environ
        assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_other_database_uris_get_the_embedded_artifact_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("AEVB_MLFLOW_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u@db.example/mlflow")
    want = (tmp_path / "m" / "artifacts" / "aevb-x").resolve().as_uri()
    assert tracking._default_artifact_location("aevb-x") == want
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking._default_artifact_location("aevb-x") is None  # the server decides


# -- a real training run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run (latent 2) plus an evaluation, in a module-wide temp store."""
    import os

    from models.config import ModelConfig, TrainConfig
    from tasks.evaluate import evaluate
    from tasks.train import train

    tmp = tmp_path_factory.mktemp("tracking")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "data")
    version = write_dataset(root, "trk", feature_shape=(4, 4))
    model = ModelConfig(latent_dim=2, hidden_sizes=(32,))
    train_config = TrainConfig(**TINY_TRAIN)
    out = train("trk", model, train_config, root)
    summary = evaluate(out.saved_model_dir, "trk", version, root, C.TEST, 8, run_id=out.run_id)
    run = tracking.client().get_run(out.run_id)
    yield {
        "out": out,
        "run": run,
        "summary": summary,
        "version": version,
        "model": model,
        "train": train_config,
    }
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


def test_run_params_are_the_fully_resolved_config(trained):
    from models.config import to_dict

    params = trained["run"].data.params
    model = dict(to_dict(trained["model"]), feature_shape=(4, 4))  # resolved from the manifest
    want = tracking.flatten(
        {
            "model": model,
            "train": to_dict(trained["train"]),
            "dataset": {"name": "trk", "version": trained["version"]},
        }
    )
    # MLflow adds the logged pyfunc's model_config as params: only those (input/...) are extra
    config_params = {k: v for k, v in params.items() if not k.startswith("input/")}
    assert config_params == want
    assert params["model.feature_shape"] == "[4, 4]" and params["train.epochs"] == "2"
    assert params["input/feature_shape"] == "[4, 4]" and params["input/dim"] == "16"


def test_run_has_dataset_tags_lineage_and_git_commit(trained):
    run = trained["run"]
    assert run.data.tags["aevb.dataset"] == "trk"
    assert run.data.tags["aevb.dataset_version"] == trained["version"]
    [ds] = run.inputs.dataset_inputs
    assert ds.dataset.name == "trk" and ds.dataset.digest == trained["version"][:36]
    assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "train"
    assert "datasets/trk/" + trained["version"] in json.loads(ds.dataset.source)["uri"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=roots.source_checkout(), capture_output=True, text=True
    )
    if head.returncode == 0:
        assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    exp = tracking.client().get_experiment(run.info.experiment_id)
    assert exp.name == "aevb-trk"  # one experiment per dataset


def test_per_epoch_metrics_are_logged_with_the_epoch_as_step(trained):
    c, run_id, out = tracking.client(), trained["out"].run_id, trained["out"]
    for key in (C.TRAIN_ELBO, C.VALID_ELBO, C.EXAMPLES_PER_SECOND):
        hist = c.get_metric_history(run_id, key)
        assert sorted(m.step for m in hist) == [1, 2], key
    valid = {m.step: m.value for m in c.get_metric_history(run_id, C.VALID_ELBO)}
    assert valid[out.best_epoch] == pytest.approx(out.best_valid_elbo, rel=1e-6)
    assert max(valid.values()) == pytest.approx(out.best_valid_elbo, rel=1e-6)


def test_evaluation_metrics_land_in_the_same_run(trained):
    metrics = tracking.client().get_run(trained["out"].run_id).data.metrics
    s = trained["summary"]
    assert metrics[C.TEST_LOG_MARGINAL_LIKELIHOOD] == pytest.approx(s.log_marginal_likelihood)
    assert metrics[C.TEST_LOG_MARGINAL_LIKELIHOOD_STDERR] == pytest.approx(
        s.log_marginal_likelihood_stderr
    )
    assert metrics[C.TEST_ELBO] == pytest.approx(s.elbo)
    assert metrics[C.TEST_KL] == pytest.approx(s.kl)


def test_the_run_has_every_plot_and_finished(trained):
    run_id = trained["out"].run_id
    logged = tracking.list_artifacts(run_id, tracking.PLOTS_ARTIFACT)
    assert logged == sorted(f"plots/{f}" for f in plots.PLOT_FILES)  # latent_dim 2: manifold too
    assert tracking.run_status(run_id) == "FINISHED"


# -- an unreachable or unhelpful server ---------------------------------------------------------
@contextlib.contextmanager
def _hang_up_server():
    """Accepts TCP connections and closes them at once; counts the attempts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    count, stop = [0], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            count[0] += 1
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", count
    finally:
        stop.set()
        thread.join(2)
        srv.close()


def test_unreachable_server_gives_one_tracking_error_after_bounded_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with _hang_up_server() as (uri, count):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(TrackingError, match="unreachable") as info:
            tracking.start_run("aevb-nowhere", "r")
        assert count[0] == 3  # the first attempt + 2 retries, then it stops
    msg = str(info.value)
    assert uri in msg and "MLFLOW_TRACKING_URI" in msg and "\n" not in msg


def test_unreachable_server_is_never_mistaken_for_no_champion(monkeypatch):
    """get_alias returns None for 'no such alias'; an unreachable registry must raise instead."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(TrackingError, match="connection refused"):
        tracking.get_alias("aevb-x", "champion")
    with pytest.raises(TrackingError):
        tracking.run_exists("0123")


class _NotFoundHandler(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self):  # noqa: N802 (http.server API)
        type(self).calls += 1
        body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such thing"})
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_client_errors_are_not_retried_and_keep_their_meaning(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
        assert tracking.get_alias("aevb-x", "champion") is None
        assert _NotFoundHandler.calls == 1  # a 404 is an answer, not a connection problem
        assert tracking.run_exists("0123") is False
        assert _NotFoundHandler.calls == 2
    finally:
        server.shutdown()
        server.server_close()


def test_retry_bounds_default_to_a_few_seconds_but_respect_the_user(monkeypatch):
    for key in tracking.HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    tracking.client()
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_cli_train_against_an_unreachable_server_exits_2_with_one_line(
    prefect_harness, data_root, monkeypatch, capsys
):
    from flows.cli import main

    write_dataset(data_root, "offline")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with _hang_up_server() as (uri, count):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        rc = main(["train", "--dataset", "offline", "--data-root", data_root, "train.epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("aevb train: error: MLflow tracking server " + uri)
    assert count[0] == 2  # bounded: 1 + 1 retry, and training never started
