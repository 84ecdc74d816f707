"""Evaluation I/O (tasks/evaluation_io.py): per-point tables aligned with the dataset, metric names,
Parquet round trip and MLflow artifact, Prefect table artifact, AIS cross-check wiring."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C
from models.config import ModelConfig
from models.errors import ConfigError
from models.vae import VAE
from tasks import scoring as evio
from tasks.ingest import ingest
from tasks.store import datasets as ds
from tasks.store import readers


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ds.DatasetManifest]:
    root = str(tmp_path_factory.mktemp("root"))
    ingest("digits", data_root=root)
    return root, ds.load_manifest(root, "digits")


@pytest.fixture(scope="module")
def vae() -> VAE:
    config = ModelConfig(
        feature_shape=(8, 8), latent_dim=2, hidden_sizes=(16,), likelihood="bernoulli"
    )
    return VAE(config, seed=1)


def test_is_per_point_rows_follow_the_split_and_metrics_use_design_names(digits, vae) -> None:
    root, manifest = digits
    seen: list[int] = []
    ev = evio.evaluate_split(
        vae, root, manifest, C.TEST, num_samples=20, batch_size=64, progress=seen.append
    )
    ids, _, labels = readers.read_split(root, "digits", None, C.TEST)
    assert list(ev.ids) == list(ids) and np.array_equal(ev.labels, labels)
    assert seen == [64, 128, 180]
    assert ev.per_point["log_marginal"].shape == (180,)
    assert np.all(ev.per_point["elbo_a"] <= ev.per_point["log_marginal"] + 1e-4)
    metrics = ev.metrics()
    assert metrics[C.TEST_LOG_MARGINAL_LIKELIHOOD] == pytest.approx(
        ev.per_point["log_marginal"].mean()
    )
    assert {
        C.TEST_ELBO,
        C.TEST_KL,
        C.TEST_ACTIVE_UNITS,
        C.TEST_LOG_MARGINAL_LIKELIHOOD_STDERR,
    } <= set(metrics)
    # digits are uint8 levels 0..16, not binary: a Bernoulli decoder gets no bits/dim.
    assert C.TEST_BITS_PER_DIM not in metrics


def test_per_point_parquet_round_trips_with_provenance(digits, vae, tmp_path) -> None:
    root, manifest = digits
    ev = evio.evaluate_split(vae, root, manifest, C.VALID, num_samples=10, max_points=30)
    table = evio.per_point_table(
        ev, {"dataset_version": manifest.version, "model": "runs:/abc/model"}
    )
    path = tmp_path / evio.artifact_name(ev)
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.num_rows == 30 and back.column_names[:3] == [C.COL_ID, C.COL_SPLIT, C.COL_LABEL]
    assert back.column(C.COL_ID).to_pylist() == [str(i) for i in ev.ids]
    np.testing.assert_array_equal(
        back.column("log_marginal").to_numpy(), ev.per_point["log_marginal"]
    )
    meta = back.schema.metadata
    assert (
        meta[b"aevb.method"] == b"is" and meta[b"aevb.dataset_version"] == manifest.version.encode()
    )


def test_ais_cross_check_reports_is_on_the_same_points_under_its_own_names(digits, vae) -> None:
    root, manifest = digits
    options = {"num_chains": 4, "num_steps": 20, "num_leapfrog_steps": 2}
    ev = evio.evaluate_split(vae, root, manifest, C.TEST, method="ais", num_samples=200, max_points=3,
                             options=options)  # fmt: skip
    assert ev.ids.shape == (3,) and set(ev.per_point) == {
        "log_marginal",
        "log_marginal_stderr",
        "is_log_marginal",
    }
    metrics = ev.metrics()
    assert metrics["test_ais_log_marginal_likelihood"] == pytest.approx(
        ev.per_point["log_marginal"].mean()
    )
    assert metrics["test_ais_is_log_marginal_likelihood"] == pytest.approx(
        ev.per_point["is_log_marginal"].mean()
    )
    assert C.TEST_LOG_MARGINAL_LIKELIHOOD not in metrics  # never overwrites the IS metric
    assert evio.per_point_table(ev).num_rows == 3


def test_unknown_method_and_split_are_config_errors(digits, vae) -> None:
    root, manifest = digits
    with pytest.raises(ConfigError, match="method='mcmc'"):
        evio.evaluate_split(vae, root, manifest, C.TEST, method="mcmc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="split='holdout'"):
        evio.evaluate_split(vae, root, manifest, "holdout")


def test_outside_a_prefect_run_no_artifact_is_created(digits, vae) -> None:
    root, manifest = digits
    ev = evio.evaluate_split(vae, root, manifest, C.TEST, num_samples=2, max_points=5)
    assert evio.publish_table_artifact(ev, "digits", "runs:/x/model") is None
    rows = evio.summary_rows(ev)
    assert {
        "metric": C.TEST_LOG_MARGINAL_LIKELIHOOD,
        "value": f"{ev.metrics()[C.TEST_LOG_MARGINAL_LIKELIHOOD]:.6g}",
    } in rows


def test_table_artifact_and_mlflow_artifact_inside_a_flow(
    prefect_harness, mlflow_store, digits, vae, tmp_path
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks import tracking

    root, manifest = digits
    run_id = tracking.start_run("aevb-evaluation-io-test", "probe")

    @flow
    def evaluate_and_publish() -> str | None:
        ev = evio.evaluate_split(vae, root, manifest, C.TEST, num_samples=5, max_points=10)
        evio.log_per_point(run_id, evio.per_point_table(ev), ev, str(tmp_path))
        return evio.publish_table_artifact(ev, "digits", f"runs:/{run_id}/model")

    key = evaluate_and_publish()
    assert key == "aevb-evaluation-digits-test-is"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert artifacts and artifacts[0].type == "table"
    assert "test_log_marginal_likelihood" in str(artifacts[0].data)
    assert tracking.list_artifacts(run_id, evio.ARTIFACT_DIR) == [
        "evaluation/test-is-k5-per-point.parquet"
    ]
