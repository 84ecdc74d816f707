"""`train.strategy = "multi_worker"` through the CLI (slow): two worker processes on 127.0.0.1,
started as on two machines (only TF_CONFIG differs): the chief runs `aevb pipeline`, the other
worker `aevb train`. They train together (identical weights from the all-reduced updates), only
the chief logs to MLflow, and the pipeline registers the result. Workers that were started with
different settings stop at the handshake with one line each instead of waiting for each other."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.flows._prefect_server import FAST, aevb_command, server_env
from tests.helpers import free_port

pytestmark = pytest.mark.slow
SETTINGS = [*FAST, "train.epochs=3", "train.strategy=multi_worker"]


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _start(tmp: Path, index: int, ports: list[int], args: list[str]) -> subprocess.Popen:
    # Each worker its own Prefect home (and temporary Prefect API), as on separate machines.
    env = server_env(tmp, None, PREFECT_HOME=str(tmp / f"prefect-{index}"))
    env["TF_CONFIG"] = _tf_config(ports, index)
    return subprocess.Popen(
        [*aevb_command(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _model_variables(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(checkpoint_dir))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    names = [n for n in names if "OPTIMIZER_SLOT" not in n]
    return {n: reader.get_tensor(n) for n in names}


def test_two_workers_train_together_and_the_chief_registers(tmp_path):
    from mlflow.tracking import MlflowClient

    from tasks.ingest import ingest

    root = tmp_path / "data"
    version = ingest("digits", "digits", str(root)).version  # both workers read this version
    ports = [free_port(), free_port()]
    chief = _start(tmp_path, 0, ports, ["pipeline", "digits", "--data-root", str(root), *SETTINGS])
    other = _start(tmp_path, 1, ports, ["train", "--dataset", "digits", "--data-root", str(root),
                                        *SETTINGS])  # fmt: skip
    (rc0, out0), (rc1, out1) = _finish([chief, other])
    assert rc0 == 0, out0[-4000:]
    assert rc1 == 0, out1[-4000:]
    assert "worker 1 of 2: trained its share; the chief (worker 0) logs to MLflow" in out1

    # The same updates on both: the chief's and the worker's last checkpoints hold equal weights.
    (chief_dir,) = [p for p in (root / "checkpoints").iterdir() if p.suffix == ""]
    worker_dir = chief_dir.with_name(chief_dir.name + ".worker-1")
    chief_vars = _model_variables(chief_dir / "ckpt")
    worker_vars = _model_variables(worker_dir / "ckpt" / "worker-1")
    assert chief_vars and chief_vars.keys() == worker_vars.keys()
    for name, value in chief_vars.items():
        np.testing.assert_array_equal(value, worker_vars[name], err_msg=name)
    # Only the chief tracked and saved: the worker's folder has no run id and no model.
    assert (chief_dir / "run_id").exists() and (chief_dir / "saved_model").is_dir()
    assert not (worker_dir / "run_id").exists() and not (worker_dir / "saved_model").exists()

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("aevb-digits").experiment_id]
    )  # one run: the worker logged nothing
    assert run.info.run_id == (chief_dir / "run_id").read_text().strip()
    assert run.data.params["train.strategy"] == "multi_worker"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_elbo")] == [1, 2, 3]
    (registered,) = client.search_model_versions("name = 'aevb-digits'")
    assert registered.run_id == run.info.run_id and registered.tags["aevb.dataset_version"] == (
        version
    )


def test_workers_with_different_settings_stop_at_the_handshake(tmp_path):
    from tasks.ingest import ingest

    root = tmp_path / "data"
    ingest("digits", "digits", str(root))
    ports = [free_port(), free_port()]
    base = ["train", "--dataset", "digits", "--data-root", str(root), *SETTINGS]
    procs = [
        _start(tmp_path, 0, ports, base),
        _start(tmp_path, 1, ports, [*base, "train.learning_rate=0.5"]),  # a typo on machine 2
    ]
    for index, (rc, out) in enumerate(_finish(procs)):
        errors = [line for line in out.splitlines() if line.startswith("aevb train: error:")]
        assert rc == 2 and len(errors) == 1, out[-4000:]
        assert f"this is worker {index}" in errors[0] and "the same --config" in errors[0]
        assert "Traceback" not in out
    assert not os.path.exists(root / "checkpoints") or not [
        p for p in (root / "checkpoints").rglob("checkpoint")
    ]  # nothing trained
