"""Every training run is evaluable: `train` logs the pyfunc model to its MLflow run, so
`runs:/<run id>/model` works with `aevb evaluate`, `aevb export` and `aevb restore` before (and
without) any registration; `register` registers that logged model instead of logging a copy."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq
import pytest

from flows import cli
from models.config import ModelConfig, TrainConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    """digits (and its inpaint copy) and a one-epoch model trained by the train task; no
    registry entry."""
    from tasks.corrupt import corrupt_dataset
    from tasks.ingest import ingest
    from tasks.train import train

    base = tmp_path_factory.mktemp("train-logs-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEVB_DATA_ROOT", str(base / "data"))
        mp.setenv("AEVB_MLFLOW_DIR", str(base / "mlflow"))
        mp.setenv("AEVB_MODEL_CACHE", str(base / "cache"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = str(base / "data")
        ingest("digits", "digits", root)
        corrupt_dataset("digits", "inpaint", data_root=root)
        args = (
            "digits",
            ModelConfig(latent_dim=2, hidden_sizes=(16,)),
            TrainConfig(epochs=1, batch_size=100),
        )
        out = train(*args, data_root=root, checkpoint_root=str(base / "ckpt"))
        yield {"root": root, "out": out, "args": args, "ckpt": str(base / "ckpt")}


def _logged_models(run_id: str) -> list:
    from tasks import tracking

    c = tracking.client()
    exp = c.get_run(run_id).info.experiment_id
    return c.search_logged_models(experiment_ids=[exp], filter_string=f"source_run_id = '{run_id}'")


def test_train_logs_the_model_to_its_run(trained):
    from tasks import tracking

    out = trained["out"]
    assert out.model_uri == f"runs:/{out.run_id}/model"
    assert len(_logged_models(out.run_id)) == 1
    assert tracking.list_registered_models() == []  # registering stays the pipeline's decision
    resolved = tracking.resolve_model(out.model_uri)
    assert resolved.run_id == out.run_id
    with open(os.path.join(resolved.saved_model_dir, "config.json")) as a:
        with open(os.path.join(out.saved_model_dir, "config.json")) as b:
            assert a.read() == b.read()  # the run's model is the SavedModel training wrote


def test_runs_uri_works_with_evaluate_export_and_restore(trained, capsys):
    from tasks import tracking

    out, root = trained["out"], trained["root"]
    uri = out.model_uri
    assert cli.main(["evaluate", "--model", uri, "--dataset", "digits", "--num-samples", "10"]) == 0
    metrics = tracking.client().get_run(out.run_id).data.metrics
    assert any(k.startswith("test_log_marginal_likelihood") for k in metrics), metrics
    assert cli.main(["export", "--model", uri, "--dataset", "digits"]) == 0
    parts = glob.glob(os.path.join(root, "latents", "digits", "*", "*", "part-*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    assert rows == 1797  # every digits row, all splits
    argv = ["restore", "--model", uri, "--dataset", "digits-inpaint", "--method", "map"]
    assert cli.main(argv) == 0, capsys.readouterr().err


def test_a_reused_run_and_its_registration_keep_one_logged_model(trained):
    """Training again (identical config+data: reused) and registering log no second copy."""
    from tasks import register
    from tasks.train import train

    out = trained["out"]
    again = train(*trained["args"], data_root=trained["root"], checkpoint_root=trained["ckpt"])
    assert again.reused and again.run_id == out.run_id and again.model_uri == out.model_uri
    (logged,) = _logged_models(out.run_id)
    mv = register.register_version(
        out.run_id, out.saved_model_dir, "digits", out.dataset_version, -30.0, name="aevb-digits"
    )
    assert len(_logged_models(out.run_id)) == 1
    assert mv.source == logged.model_uri  # the model training logged, not a copy


def test_a_run_without_a_logged_model_gets_one_when_reused(trained, tmp_path):
    """Runs finished by releases that logged no model: the next identical `train` logs it."""
    from tasks import tracking
    from tasks.train import train

    fresh = train(
        "digits",
        ModelConfig(latent_dim=2, hidden_sizes=(8,)),
        TrainConfig(epochs=1, batch_size=100),
        data_root=trained["root"],
        checkpoint_root=str(tmp_path / "ckpt"),
    )
    (logged,) = _logged_models(fresh.run_id)
    tracking.client().delete_logged_model(logged.model_id)  # as an older release left it
    assert tracking.logged_model_uri(fresh.run_id) is None
    again = train(
        "digits",
        ModelConfig(latent_dim=2, hidden_sizes=(8,)),
        TrainConfig(epochs=1, batch_size=100),
        data_root=trained["root"],
        checkpoint_root=str(tmp_path / "ckpt"),
    )
    assert again.reused and tracking.logged_model_uri(fresh.run_id) is not None
    assert tracking.resolve_model(again.model_uri).run_id == fresh.run_id
