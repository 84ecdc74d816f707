"""A real `mlflow server` on 127.0.0.1: the pipeline tracks and registers over HTTP, and a consumer
loads the champion by alias from the server and gets the encoder's numbers."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import env, free_port, stop_group

FAST = [
    "train.epochs=2",
    "train.jit_compile=false",
    "model.hidden_sizes=[32]",
    "model.latent_dim=3",
    "evaluate.num_samples=16",
    "export.splits=['test']",
]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite backend and a local artifact destination; stopped afterwards."""
    import requests

    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
         "--artifacts-destination", str(tmp / "artifacts")],
        env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.5)
        yield {"url": url, "dir": tmp}
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def pipeline_over_http(prefect_harness, mlflow_server, tmp_path_factory):
    from flows.cli import main

    tmp = tmp_path_factory.mktemp("over-http")
    with env(
        MLFLOW_TRACKING_URI=mlflow_server["url"], AEVB_MLFLOW_DIR=str(tmp / "must-stay-empty")
    ):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["pipeline", "digits", "--data-root", str(tmp / "data"), *FAST])
        yield {"rc": rc, "stdout": buf.getvalue(), "root": tmp / "data", "tmp": tmp}


@pytest.mark.slow
def test_pipeline_tracks_and_registers_over_http_and_a_consumer_loads_the_champion(
    mlflow_server, pipeline_over_http, monkeypatch
):
    import mlflow
    from mlflow.tracking import MlflowClient

    from models.saved import load_vae
    from tasks.store import readers

    assert pipeline_over_http["rc"] == 0, pipeline_over_http["stdout"]
    assert "aevb-digits version 1 @champion" in pipeline_over_http["stdout"]
    # Nothing went to the embedded store: the server holds the runs and the artifacts.
    assert not (pipeline_over_http["tmp"] / "must-stay-empty" / "mlflow.db").exists()
    assert list((mlflow_server["dir"] / "artifacts").rglob("MLmodel"))

    url = mlflow_server["url"]
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    mv = client.get_model_version_by_alias("aevb-digits", "champion")
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert np.isfinite(run.data.metrics["test_log_marginal_likelihood"])
    assert run.data.tags["aevb.dataset"] == "digits"

    # A consumer that only knows the server URL and the alias.
    # mlflow.set_*_uri export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI; monkeypatch undoes both.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    model = mlflow.pyfunc.load_model("models:/aevb-digits@champion")
    _, x, _ = readers.read_split(str(pipeline_over_http["root"]), "digits", None, "test")
    got = model.predict(x[:20])
    # ... equals the encoder that training left in the local checkpoint folder.
    (saved,) = Path(pipeline_over_http["root"], "checkpoints").glob("digits-*/saved_model")
    want = load_vae(str(saved)).posterior_params(x[:20])[0]
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-6)
