"""What a training run records in MLflow besides its metrics: lineage tags (where the data came
from, which Prefect flow run trained it), the training plots (tasks/plots.py's PNGs on held-out
rows, under plots/) and the model (a pyfunc from code: `runs:/<run id>/model`)."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from models import constants as C
from tasks import plots, tracking
from tasks.logs import logger, prefect_run
from tasks.store import datasets, readers

PLOTS_ARTIFACT = "plots"


def model_uri(run_id: str) -> str:
    """Where a training run's model is: the pyfunc `log_model` logged to the run."""
    return f"runs:/{run_id}/{tracking.MODEL_ARTIFACT}"


def log_model(
    run_id: str, saved_model_dir: str, data_root: str, manifest: datasets.DatasetManifest
) -> str:
    """Log the SavedModel to the run as its pyfunc model (input example: 5 train rows), unless a
    complete one is there already (a rerun after a kill before DONE); returns the logged-model
    URI (models:/m-...), which `runs:/<run id>/model` resolves to."""
    logged = tracking.logged_model_uri(run_id)
    if logged:
        return logged
    m = manifest
    _, example, _ = next(readers.iter_batches(data_root, m.name, m.version, C.TRAIN, 5))
    start = time.perf_counter()
    logged = tracking.log_pyfunc_model(run_id, saved_model_dir, example)
    seconds = time.perf_counter() - start
    logger().info("train: model logged as %s (%.1f s)", model_uri(run_id), seconds)
    return logged


def held_out_rows(
    data_root: str, manifest: datasets.DatasetManifest, max_rows: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_rows`` (x [N, D] model space, labels [N]) from the test split, else valid/train."""
    for split in (C.TEST, C.VALID, C.TRAIN):
        xs, labels, rows = [], [], 0
        for _, x, lab in readers.iter_batches(
            data_root, manifest.name, manifest.version, split, 500
        ):
            xs.append(x[: max_rows - rows])
            labels.append(lab[: max_rows - rows])
            rows += len(xs[-1])
            if rows >= max_rows:
                break
        if rows:
            return np.concatenate(xs), np.concatenate(labels)
    raise ValueError(f"dataset {manifest.name}@{manifest.version} has no rows")  # ingest forbids it


def log_training_plots(
    run_id: str,
    vae,
    data_root: str,
    manifest: datasets.DatasetManifest,
    history: list[dict[str, float]],
    seed: int = 0,
) -> list[str]:
    """Render tasks/plots.py's PNGs for a trained VAE on held-out rows and log them under plots/."""
    x, labels = held_out_rows(data_root, manifest)
    with tempfile.TemporaryDirectory(prefix="aevb-plots-") as tmp:
        paths = plots.write_training_plots(vae, x, labels, history, tmp, seed=seed)
        tracking.log_artifacts(run_id, tmp, PLOTS_ARTIFACT)
    return [f"{PLOTS_ARTIFACT}/{os.path.basename(p)}" for p in paths]


TAG_STD_FLOOR = "aevb.warning.std_floor"


def warn_std_floor(run_id: str | None, vae, data_root: str, manifest: datasets.DatasetManifest):
    """A Gaussian decoder whose learned std sits on model.min_std for most pixels (on held-out
    rows, dequantized as in training): one log line and the MLflow tag `aevb.warning.std_floor`.
    Returns the fraction on the floor (None for other decoders)."""
    from models.discrete import transform_rows
    from models.vae import FLOOR_WARN_FRACTION, std_floor_fraction
    from tasks.scoring import model_transform

    if vae.config.likelihood != "gaussian":
        return None
    x, _ = held_out_rows(data_root, manifest, max_rows=500)
    fraction = std_floor_fraction(vae, transform_rows(model_transform(vae, manifest), x, 0, 0))
    if fraction > FLOOR_WARN_FRACTION:
        message = (
            f"the Gaussian decoder's std sits on its floor model.min_std={vae.config.min_std:.4g} "
            f"for {fraction:.0%} of held-out pixels: its log-density is set by the floor, not "
            "learned (lower model.min_std, or use a likelihood for discrete data)"
        )
        logger().warning("train: warning: %s", message)
        if run_id:
            tracking.set_tags(run_id, {TAG_STD_FLOOR: message})
    return fraction


def lineage_tags(root: str, m: datasets.DatasetManifest) -> dict[str, str]:
    """Where the data came from and which Prefect flow run trained the model (both ways: the
    pipeline's Prefect artifact links back to this run). Tags are refreshed on resume."""
    uri = datasets.version_dir(root, m.name, m.version)
    tags = {
        "aevb.dataset_uri": uri,  # local path or s3://... of the dataset version
        "aevb.data_root": root,
        "aevb.dataset_source": str((m.source or {}).get("uri", "")),
        "aevb.package_version": _package_version(),
    }
    run = prefect_run()
    if run:
        tags.update({f"aevb.prefect.{k}": v for k, v in run.items() if v})
        link = f" ([open]({run['flow_run_url']}))" if run.get("flow_run_url") else ""
        tags["mlflow.note.content"] = (
            f"Trained by Prefect flow run `{run['flow_run_name']}` of `{run['flow_name']}` "
            f"(id {run['flow_run_id']}){link} on dataset `{m.name}` version `{m.version}` at "
            f"`{uri}`."
        )
    return tags


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aevb-pipeline")
    except PackageNotFoundError:
        return "unknown"
