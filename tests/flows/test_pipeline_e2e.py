"""End to end: `aevb pipeline digits` on temp stores, checked the way a user would check it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C

FAST = [
    "train.epochs=3",
    "model.hidden_sizes=[64]",
    "model.latent_dim=4",
    "evaluate.num_samples=64",
]


@pytest.fixture(scope="module")
def pipeline_run(prefect_harness, tmp_path_factory):
    """Run the CLI once for the module; the tests below inspect what it left behind."""
    import os

    tmp = tmp_path_factory.mktemp("e2e")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    from flows.cli import main

    out_lines: list[str] = []
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["pipeline", "digits", "--data-root", str(tmp / "data"), *FAST])
    out_lines = buf.getvalue().splitlines()
    yield {"rc": rc, "stdout": out_lines, "root": tmp / "data", "mlflow": tmp / "mlflow"}
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


def test_exit_code_and_summary(pipeline_run):
    assert pipeline_run["rc"] == 0
    text = "\n".join(pipeline_run["stdout"])
    for needle in (
        "test ELBO",
        "test log p(x)",
        "aevb-digits version 1 @champion",
        "latent table",
        "mlflow ui",
    ):
        assert needle in text, f"summary lacks {needle!r}:\n{text}"


def test_dataset_on_disk_matches_contract(pipeline_run):
    ds = pipeline_run["root"] / "datasets" / "digits"
    version = (ds / "CURRENT").read_text().strip()
    manifest = json.loads((ds / f"{version}.manifest.json").read_text())
    assert manifest["version"] == version and manifest["name"] == "digits"
    assert list(manifest["feature_shape"]) == [8, 8]
    rows = 0
    ids = []
    for split in C.SPLITS:
        table = pq.read_table(ds / version / f"split={split}")
        assert {C.COL_ID, C.COL_X, C.COL_LABEL} <= set(table.column_names)
        assert table.num_rows == manifest["rows"][split]
        rows += table.num_rows
        ids += table.column(C.COL_ID).to_pylist()
    assert rows == 1797  # scikit-learn's digits
    assert len(set(ids)) == rows


def _client(pipeline_run):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{pipeline_run['mlflow'] / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_mlflow_run_has_finite_metrics_params_and_lineage(pipeline_run):
    c = _client(pipeline_run)
    mv = c.get_model_version_by_alias("aevb-digits", "champion")
    assert int(mv.version) == 1
    run = c.get_run(mv.run_id)
    m = run.data.metrics
    for key in (
        C.TRAIN_ELBO,
        C.VALID_ELBO,
        C.TEST_ELBO,
        C.TEST_LOG_MARGINAL_LIKELIHOOD,
        C.TEST_LOG_MARGINAL_LIKELIHOOD_STDERR,
        C.EXAMPLES_PER_SECOND,
    ):
        assert key in m and math.isfinite(m[key]), key
    # Importance sampling with K=64 is a tighter bound than the single-sample ELBO.
    assert m[C.TEST_LOG_MARGINAL_LIKELIHOOD] >= m[C.TEST_ELBO]
    assert len(c.get_metric_history(run.info.run_id, C.TRAIN_ELBO)) == 3  # one per epoch
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.latent_dim"] == "4"
    assert run.data.tags["aevb.dataset"] == "digits"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    assert not (Path.cwd() / "mlruns").exists()


def test_latent_table_has_a_row_per_input_and_encoder_values(pipeline_run):
    from tasks.store import readers, tables
    from tasks.tracking import resolve_model

    table_dir = pipeline_run["root"] / "latents" / "digits" / "aevb-digits" / "v1"
    # The folder holds Parquet files only (its manifest sits beside it): read it as is.
    df = pq.read_table(table_dir).to_pandas()
    assert len(df) == 1797 and df[C.COL_ID].is_unique
    expected = (
        [C.COL_ID, C.COL_SPLIT, C.COL_LABEL]
        + [f"z_mean_{i}" for i in range(4)]
        + [f"z_std_{i}" for i in range(4)]
        + [tables.ELBO_COLUMN]  # the per-row anomaly score (export.log_px_samples=0: no log_px)
    )
    assert list(df.columns) == expected
    assert (df[[f"z_std_{i}" for i in range(4)]].to_numpy() > 0).all()
    # Bernoulli log-likelihood of values in [0, 1] is <= 0 and KL >= 0: every ELBO is <= 0
    assert np.isfinite(df["elbo"]).all() and (df["elbo"] <= 0).all()
    root = str(pipeline_run["root"])
    ids, x, labels = readers.read_split(root, "digits", None, C.TEST)
    assert set(df.loc[df[C.COL_SPLIT] == C.TEST, C.COL_ID]) == set(ids)
    # Values equal what the registered model's encoder gives for the same rows.
    import os

    os.environ["AEVB_MLFLOW_DIR"] = str(pipeline_run["mlflow"])
    from models.saved import load_vae

    vae = load_vae(resolve_model("models:/aevb-digits@champion").saved_model_dir)
    want = vae.posterior_params(x[:10])[0].numpy()
    got = df.set_index(C.COL_ID).loc[list(ids[:10]), [f"z_mean_{i}" for i in range(4)]].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    meta = json.loads(
        pq.read_schema(next(table_dir.glob("part-test-*.parquet"))).metadata[b"aevb.provenance"]
    )
    assert meta["model_version"] == 1 and meta["dataset"] == "digits"
