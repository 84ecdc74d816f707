"""A rerun finishes what a killed pipeline started (flows/pipeline.py `finish_step`).

`aevb pipeline` runs as a subprocess on the session's Prefect API and is SIGKILLed at one stage
boundary (`tasks.store.publish.fault_point`, AEVB_TEST_KILL_AT); the same command is run again
(in this process, which has TensorFlow imported already). The end state must equal an
uninterrupted run's: one MLflow run, the same model versions, champion and gate tags, the same
latent table; the retrain lock free; and the rerun says what it completed instead of SKIPPED.

One kill point per distinct state a kill can leave. Points that leave the same state as one
tested here: `pipeline_after_train` and `pipeline_after_evaluate` = `register_before_version`
(a finished training, not registered); `pipeline_after_gate` and `table_before_publish` =
`export_mid_write` (gated, no table).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import env

REPO = Path(__file__).resolve().parents[2]
MODEL = "aevb-digits"
FAST = [
    "train.epochs=2",
    "train.jit_compile=false",
    "model.hidden_sizes=[16]",
    "model.latent_dim=2",
    "evaluate.num_samples=8",
    "export.splits=['test']",
    "pipeline.lock_timeout_seconds=60",
    "pipeline.retry_delay_seconds=0",
]
# kill point -> what the rerun must report as completed ("" = a plain run; None = SKIPPED)
POINTS = {
    "pipeline_after_lock": "",
    "train_after_epoch": "finished the interrupted training from its epoch-1 checkpoint",
    "register_before_version": "registered and gated the finished training run",
    "register_before_gate": "gated v1 (it was registered but never gated)",
    "export_mid_write": "exported the champion's latent table",
    "pipeline_after_export": None,
}
KEPT_TAGS = (
    "aevb.dataset_version",
    "aevb.test_log_marginal_likelihood",
    "aevb.gate.decision",
    "aevb.gate.evaluation",
    "aevb.gate.comparable",
    "aevb.gate.candidate_log_marginal_likelihood",
    "aevb.score_kind",
)


def _argv(tmp: Path) -> list[str]:
    return ["pipeline", "digits", "--data-root", str(tmp / "data"), *FAST]


def _killed_pipeline(tmp: Path, kill_at: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "AEVB_MLFLOW_DIR": str(tmp / "mlflow"),
        "AEVB_TEST_KILL_AT": kill_at,
        "PYTHONPATH": str(REPO),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *_argv(tmp)],
        env=env,
        cwd=str(tmp),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _pipeline(tmp: Path) -> tuple[int, str, str]:
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with env(AEVB_MLFLOW_DIR=str(tmp / "mlflow"), MLFLOW_TRACKING_URI=None):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(_argv(tmp))
    return rc, out.getvalue(), err.getvalue()


def _end_state(tmp: Path) -> dict:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: v.version)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    runs = client.search_runs([client.get_experiment_by_name(MODEL).experiment_id])
    table = pq.read_table(tmp / "data" / "latents" / "digits" / MODEL / f"v{champion.version}")
    df = table.to_pandas().sort_values("id")
    tags = [{k: v.tags.get(k) for k in KEPT_TAGS} for v in versions]
    scores = [{k: t for k, t in v.tags.items() if k.startswith("aevb.score.")} for v in versions]
    return {
        "runs": sorted(r.info.status for r in runs),
        "versions": [int(v.version) for v in versions],
        "champion": int(champion.version),
        "challenger": int(client.get_model_version_by_alias(MODEL, "challenger").version),
        "tags": tags,
        "scores": scores,
        "ids": df["id"].tolist(),
        "z": df[[c for c in df.columns if c.startswith("z_")]].to_numpy(),
    }


@pytest.fixture(scope="module")
def baseline(prefect_harness, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    rc, _, err = _pipeline(tmp)
    assert rc == 0, err[-3000:]
    return _end_state(tmp)


@pytest.mark.slow
@pytest.mark.parametrize("point", list(POINTS))
def test_a_rerun_after_a_kill_completes_what_was_missing(baseline, tmp_path, point):
    from tasks import locks

    killed = _killed_pipeline(tmp_path, point)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    rc, out, err = _pipeline(tmp_path)
    assert rc == 0, err[-3000:]
    expected = POINTS[point]
    if expected is None:
        assert "SKIPPED" in out and "completed " not in out
    else:
        assert "SKIPPED" not in out, out
        if expected:
            assert f"completed                  {expected}" in out, out
        else:
            assert "completed " not in out, out
    state = _end_state(tmp_path)
    z, want_z = state.pop("z"), baseline["z"]
    assert state == {k: v for k, v in baseline.items() if k != "z"}
    # Resumed training takes exactly the uninterrupted run's steps: the same numbers.
    np.testing.assert_array_equal(z, want_z)
    (lock,) = locks.status(MODEL)
    assert (lock.state, lock.active_slots, lock.holder) == ("free", 0, None)
