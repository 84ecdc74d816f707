"""The evaluate stage (tasks/evaluate.py) and the `aevb evaluate` verb with --method is|ais|hmc.

One tiny model is trained and registered per module (4x4 binary data, latent 2); the verb then runs
in-process through `flows.cli.main`, as a user would, on the shared Prefect harness.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C
from tasks import tracking
from tests.tasks._mlflow_helpers import write_dataset

DATASET = "evaldata"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Train -> IS evaluate (logged to the run) -> register as aevb-evaldata@champion."""
    from models.config import ModelConfig, TrainConfig
    from tasks.evaluate import evaluate
    from tasks.register import register
    from tasks.train import train

    tmp = tmp_path_factory.mktemp("evaluate")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "data")
    version = write_dataset(root, DATASET, feature_shape=(4, 4))
    model = ModelConfig(latent_dim=2, hidden_sizes=(16,))
    out = train(DATASET, model, TrainConfig(epochs=3, batch_size=40, jit_compile=False), root)
    ev = evaluate(out.saved_model_dir, DATASET, version, root, C.TEST, 64, run_id=out.run_id)
    reg = register(
        out.run_id, out.saved_model_dir, DATASET, version, ev.log_marginal_likelihood,
        data_root=root, eval_num_samples=64,
    )  # fmt: skip
    yield {"root": root, "run_id": out.run_id, "is": ev, "saved": out.saved_model_dir,
           "uri": f"models:/{reg.name}@champion", "tmp": tmp}  # fmt: skip
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


def _run_metrics(run_id: str) -> dict[str, float]:
    return dict(tracking.client().get_run(run_id).data.metrics)


def _per_point(run_id: str, name: str, dst) -> pq.Table:
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"evaluation/{name}", dst_path=str(dst)
    )
    return pq.read_table(local)


def _cli(*argv: str) -> tuple[int, str, str]:
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["evaluate", *argv])
    return rc, out.getvalue(), err.getvalue()


def test_is_metrics_and_per_point_artifact_land_in_the_run(registered) -> None:
    ev, run_id = registered["is"], registered["run_id"]
    metrics = _run_metrics(run_id)
    assert metrics[C.TEST_LOG_MARGINAL_LIKELIHOOD] == pytest.approx(ev.log_marginal_likelihood)
    assert metrics[C.TEST_ELBO] == pytest.approx(ev.elbo)
    assert ev.elbo <= ev.log_marginal_likelihood + 1e-6  # estimator B is a lower bound too
    assert ev.per_point_artifact == "evaluation/test-is-k64-per-point.parquet"
    table = _per_point(run_id, "test-is-k64-per-point.parquet", registered["tmp"] / "dl-is")
    assert table.num_rows == ev.rows == 40
    assert table.column(C.COL_ID).to_pylist()[:2] == ["test-0-0", "test-0-1"]  # stored order
    mean = float(np.mean(table.column("log_marginal").to_numpy()))
    assert mean == pytest.approx(ev.log_marginal_likelihood, rel=1e-9)
    assert table.schema.metadata[b"aevb.run_id"] == run_id.encode()
    assert table.schema.metadata[b"aevb.score_kind"] == b"log-probability:bernoulli"
    assert ev.score_kind == "log-probability:bernoulli" and ev.seed == 0
    assert ev.table_artifact is None  # not inside a Prefect run: nothing published


def test_estimates_with_another_k_never_overwrite_each_other(registered) -> None:
    from tasks.evaluate import evaluate

    run_id, first = registered["run_id"], registered["is"]  # K = 64, logged by the fixture
    r = registered
    small = evaluate(r["saved"], DATASET, None, r["root"], C.TEST, 8, run_id=run_id, seed=1)
    history = tracking.client().get_metric_history(run_id, C.TEST_LOG_MARGINAL_LIKELIHOOD)
    by_k = {m.step: m.value for m in history}
    assert by_k[64] == pytest.approx(first.log_marginal_likelihood)
    assert by_k[8] == pytest.approx(small.log_marginal_likelihood)
    # The run's headline value stays the estimate with the most samples (MLflow: largest step).
    assert _run_metrics(run_id)[C.TEST_LOG_MARGINAL_LIKELIHOOD] == by_k[64]
    names = tracking.list_artifacts(run_id, "evaluation")
    assert {
        "evaluation/test-is-k64-per-point.parquet",
        "evaluation/test-is-k8-per-point.parquet",
    } <= set(names)


def test_cli_ais_agrees_with_large_k_is_and_never_overwrites_is_metrics(
    prefect_harness, registered
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    run_id, before = registered["run_id"], _run_metrics(registered["run_id"])
    rc, out, err = _cli(
        "--model", registered["uri"], "--dataset", DATASET, "--data-root", registered["root"],
        "--method", "ais", "--max-points", "4", "-k", "4000", "--num-chains", "16",
        "--num-steps", "300", "--leapfrog-steps", "3",
    )  # fmt: skip
    assert rc == 0, err
    assert "AIS estimate" in out and "evaluation/test-ais-k4000-per-point.parquet" in out
    after = _run_metrics(run_id)
    for key in (C.TEST_LOG_MARGINAL_LIKELIHOOD, C.TEST_ELBO, C.TEST_KL):
        assert after[key] == before[key]  # the IS numbers are untouched
    assert {"test_ais_log_marginal_likelihood", "test_ais_log_marginal_likelihood_stderr",
            "test_ais_is_log_marginal_likelihood"} <= set(after)  # fmt: skip

    table = _per_point(run_id, "test-ais-k4000-per-point.parquet", registered["tmp"] / "dl-ais")
    ais = table.column("log_marginal").to_numpy()
    is_k = table.column("is_log_marginal").to_numpy()
    assert table.num_rows == 4 and table.schema.metadata[b"aevb.method"] == b"ais"
    # Both estimate the same log p(x) (latent dim 2, so both are close to it). Measured spread on
    # this barely trained model: AIS per-point stderr ~0.01 nats, but IS at K=4000 still moves by
    # up to ~0.2 nats on a point where q is too narrow (ESS ~ 400 of 4000, and ~160 of 100,000).
    # Tolerances: 0.1 nats on the mean over the points, 0.3 per point - far below what a missing
    # prior term, a wrong sign or an annealing path not ending at the posterior (>= 1 nat) gives.
    assert abs(float(np.mean(ais - is_k))) <= 0.1, (ais, is_k)
    np.testing.assert_allclose(ais, is_k, atol=0.3)
    assert after["test_ais_log_marginal_likelihood"] == pytest.approx(float(np.mean(ais)))

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["aevb-evaluation-evaldata-test-ais"])
            )
        )
    assert found and found[0].type == "table"
    assert "test_ais_log_marginal_likelihood" in str(found[0].data)


def test_cli_hmc_maps_its_options_and_logs_under_its_own_names(prefect_harness, registered) -> None:
    run_id = registered["run_id"]
    rc, out, err = _cli(
        "--model", registered["uri"], "--dataset", DATASET, "--data-root", registered["root"],
        "--method", "hmc", "--max-points", "2", "-k", "2000", "--num-chains", "4",
        "--burnin", "100", "--num-steps", "200", "--leapfrog-steps", "3",
    )  # fmt: skip
    assert rc == 0, err
    assert "App. D HMC estimate" in out
    metrics = _run_metrics(run_id)
    assert {"test_hmc_log_marginal_likelihood", "test_hmc_is_log_marginal_likelihood"} <= set(
        metrics
    )
    table = _per_point(run_id, "test-hmc-k2000-per-point.parquet", registered["tmp"] / "dl-hmc")
    meta = table.schema.metadata
    assert table.num_rows == 2 and meta[b"aevb.method"] == b"hmc"
    # --num-steps is the number of kept draws for hmc, --burnin its burn-in
    assert b"'num_samples': 200" in meta[b"aevb.options"]
    assert b"'num_burnin': 100" in meta[b"aevb.options"]
    # A harmonic-mean-type estimate from 200 draws is noisier than AIS (measured here: 0.03 nats
    # below IS); 0.2 nats still catches a wrong option mapping or a missing term (>= 1 nat).
    np.testing.assert_allclose(
        table.column("log_marginal").to_numpy(), table.column("is_log_marginal").to_numpy(),
        atol=0.2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "mcmc"], "--method 'mcmc' is not allowed; choose one of is, ais, hmc"),
        (["--num-chains", "4"], "--num-chains apply to --method ais|hmc only"),
        (["--method", "ais", "--burnin", "10"], "--burnin applies to --method hmc only"),
        (["--max-points", "0"], "--max-points=0 must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_2(extra, message) -> None:
    # The model does not exist: arguments are checked before anything is resolved or started.
    rc, out, err = _cli("--model", "models:/nope@champion", "--dataset", DATASET, *extra)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
