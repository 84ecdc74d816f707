"""A convolutional model through everything downstream: the pipeline (train, evaluate, gate,
export with scores), the training plots, the registry pyfunc, restoration and sampling."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C
from tests.helpers import env

CONV = [
    "model.architecture=conv",
    "model.conv_channels=[8,16]",
    "model.hidden_sizes=[32]",
    "model.latent_dim=2",
    "train.epochs=2",
    "evaluate.num_samples=16",
    "export.splits=['test']",
    "export.log_px_samples=8",
]


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    from flows.config import load_config
    from flows.pipeline import pipeline_flow

    tmp = tmp_path_factory.mktemp("conv-pipeline")
    root = str(tmp / "data")
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp / "mlflow")):
        summary = pipeline_flow(load_config(overrides=[*CONV, f"data.data_root={root!r}"]))
        yield {"root": root, "summary": summary, "uri": "models:/aevb-digits@champion"}


def test_the_pipeline_trains_evaluates_registers_and_exports_a_conv_model(run):
    from models.saved import read_config
    from tasks import tracking

    s = run["summary"]
    assert s.model_version == 1 and s.promoted
    assert np.isfinite(s.test_log_marginal_likelihood) and np.isfinite(s.test_elbo)
    config, _ = read_config(tracking.resolve_model(run["uri"]).saved_model_dir)
    assert config.architecture == "conv" and config.conv_channels == (8, 16)
    assert config.feature_shape == (8, 8)
    df = pq.read_table(s.latent_table).to_pandas()
    assert len(df) == s.latent_rows == 180
    assert np.isfinite(df[["elbo", "log_px"]].to_numpy()).all()
    plots = [p.rsplit("/", 1)[1] for p in tracking.list_artifacts(s.run_id, "plots")]
    assert {"reconstructions.png", "prior_samples.png", "manifold.png"} <= set(plots)


def test_the_registry_pyfunc_serves_the_conv_model(run):
    import mlflow.pyfunc

    from models.saved import load_serving
    from tasks import tracking
    from tasks.store import readers

    _, x, _ = readers.read_split(run["root"], "digits", None, C.TEST)
    x = np.asarray(x[:5], np.float32)
    model = mlflow.pyfunc.load_model(run["uri"])
    z = model.predict(x)
    recon = model.predict(x, params={"output": "reconstruction"})
    serving = load_serving(tracking.resolve_model(run["uri"]).saved_model_dir)
    np.testing.assert_array_equal(z, serving.signatures["encode"](x=x)["z_mean"].numpy())
    assert z.shape == (5, 2) and recon.shape == (5, 64)
    assert recon.min() >= 0.0 and recon.max() <= 1.0


def test_restoration_and_sampling_work_with_the_conv_model(run):
    from tasks.corrupt import corrupt_dataset
    from tasks.restore import RestoreSettings, restore_dataset
    from tasks.sample import read_samples, sample_model

    root = run["root"]
    corrupt_dataset("digits", "inpaint", data_root=root)
    out = restore_dataset(
        run["uri"], "digits-inpaint", "map", data_root=root, settings=RestoreSettings(map_steps=5)
    )
    assert out.rows == 180 and np.isfinite(list(out.metrics.values())).all()
    samples = sample_model(run["uri"], num_samples=12, data_root=root)
    assert "manifold.png" in samples.files
    assert read_samples(samples.path)["x_mean"].shape == (12, 64)
    assert os.path.isfile(os.path.join(samples.path, "grid.png"))
