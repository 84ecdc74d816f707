"""REST serving of the registry model: `mlflow models serve --env-manager local` on 127.0.0.1
answers each output with the numbers of the in-process encoder and refuses stored-scale inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tasks import register as R
from tasks import tracking
from tests.helpers import free_port, stop_group
from tests.tasks._mlflow_helpers import write_dataset

pytestmark = pytest.mark.slow  # a scoring server process that imports TensorFlow: ~20 s

SHAPE = (4, 4)
LATENT = 3
SCALE = 1 / 16  # as for scikit-learn's digits: stored 0..16, model inputs in [0, 1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`aevb-srv@champion` in a temp store, served by `mlflow models serve` on a free port."""
    import requests

    from models.config import ModelConfig
    from models.saved import save_model
    from models.vae import VAE

    tmp = tmp_path_factory.mktemp("serving")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "data")
    version = write_dataset(root, "srv", feature_shape=SHAPE)
    config = ModelConfig(feature_shape=SHAPE, latent_dim=LATENT, hidden_sizes=(32,))
    saved = save_model(
        VAE(config, seed=5), str(tmp / "model"), extra={"scale": SCALE, "value_range": [0, 1]}
    )
    run_id = tracking.start_run("aevb-srv", "serving")
    tracking.end_run(run_id)
    R.register(run_id, saved, "srv", version, -10.0, data_root=root, eval_num_samples=8)
    port = free_port()
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin folder must be on PATH.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "PATH": path}
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/aevb-srv@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"scoring server did not start:\n{(tmp / 'serve.log').read_text()}")
            time.sleep(0.5)
        x = (np.random.default_rng(11).random((7, 16)) < 0.4).astype(np.float32)
        yield {"url": url, "saved": saved, "x": x}
    finally:
        stop_group(proc)
        log.close()
        if old is None:
            os.environ.pop("AEVB_MLFLOW_DIR", None)
        else:
            os.environ["AEVB_MLFLOW_DIR"] = old


def _in_process(saved: str, x: np.ndarray) -> dict[str, np.ndarray]:
    from models.saved import load_vae

    vae = load_vae(saved)
    z_mean, z_std = (t.numpy() for t in vae.posterior_params(x))
    return {"z_mean": z_mean, "z_std": z_std, "reconstruction": vae.decode_mean(z_mean).numpy()}


def _post(url: str, body: dict):
    import requests

    return requests.post(f"{url}/invocations", json=body, timeout=60)


@pytest.mark.parametrize("output", ["z_mean", "z_std", "reconstruction"])
def test_each_output_over_http_equals_the_in_process_encoder(served, output):
    want = _in_process(served["saved"], served["x"])[output]
    answer = _post(served["url"], {"inputs": served["x"].tolist(), "params": {"output": output}})
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["predictions"], dtype=np.float32)
    assert got.shape == want.shape == (7, 16 if output == "reconstruction" else LATENT)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_default_output_is_z_mean_and_a_dataframe_body_works(served):
    want = _in_process(served["saved"], served["x"])["z_mean"]
    x = served["x"].astype(np.float64)
    body = {"dataframe_split": {"columns": [f"p{i}" for i in range(16)], "data": x.tolist()}}
    answer = _post(served["url"], body)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], want, rtol=1e-5, atol=1e-6)


def test_stored_scale_inputs_are_refused_over_http_with_the_scale_to_apply(served):
    answer = _post(served["url"], {"inputs": (served["x"] * 16).tolist()})
    assert answer.status_code == 400
    message = answer.json()["message"]
    assert "inputs span [0, 16]" in message and "accepted model-space range [0, 1]" in message
    assert f"input scale {SCALE:g}" in message
