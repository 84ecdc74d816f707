"""Train stage: fit the AEVB model on a Parquet dataset version and track it in MLflow.

The checkpoint folder is keyed by (model config, train config, dataset version). It holds the
per-epoch TF checkpoints, the MLflow run id and, once training finished, `DONE`. So:
- a killed run, started again with the same config and data, resumes at its last epoch and keeps
  logging into the same MLflow run;
- a finished run is not repeated (pass force=True to retrain anyway).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.config import ModelConfig, TrainConfig, to_dict
from models.errors import TrainingDivergedError
from tasks import datasets, tracking
from tasks.logs import logger
from tasks.paths import default_checkpoint_root


@dataclass(frozen=True)
class TrainOutput:
    run_id: str
    experiment: str
    saved_model_dir: str
    dataset: str
    dataset_version: str
    epochs_completed: int
    best_epoch: int
    best_valid_elbo: float
    resumed_from_epoch: int
    reused: bool  # True when an identical finished run was found and nothing was trained


def experiment_name(dataset: str) -> str:
    return f"aevb-{dataset}"


def run_key(model: ModelConfig, train: TrainConfig, dataset: str, version: str) -> str:
    train_dict = to_dict(train)
    if train_dict.get("theta") == "map":  # the default: keys of runs made before the option stay
        del train_dict["theta"]
    blob = json.dumps(
        {"model": to_dict(model), "train": train_dict, "dataset": dataset, "version": version},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def train(
    dataset: str,
    model: ModelConfig,
    train_config: TrainConfig,
    data_root: str | None = None,
    version: str | None = None,
    checkpoint_root: str | None = None,
    force: bool = False,
) -> TrainOutput:
    """Train on the dataset's train split (validation: valid split); returns where the model is."""
    import tensorflow as tf

    from models.saved import save_model
    from models.training import fit
    from models.vae import VAE

    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    model = dataclasses.replace(model, feature_shape=tuple(manifest.feature_shape))
    datasets.check_model_inputs(manifest, model.likelihood)
    key = run_key(model, train_config, manifest.name, manifest.version)
    ckpt_dir = os.path.join(
        checkpoint_root or default_checkpoint_root(root), f"{manifest.name}-{key}"
    )
    saved_dir = os.path.join(ckpt_dir, "saved_model")
    if force and os.path.isdir(ckpt_dir):
        shutil.rmtree(ckpt_dir)
    os.makedirs(ckpt_dir, exist_ok=True)
    experiment = experiment_name(manifest.name)
    log = logger()

    run_id = _read(os.path.join(ckpt_dir, "run_id"))
    done = _read(os.path.join(ckpt_dir, "DONE"))
    if done and run_id and tracking.run_exists(run_id) and os.path.isdir(saved_dir):
        info = json.loads(done)
        log.info(
            "train: identical finished run %s found (config+data unchanged); not retraining", run_id
        )
        return TrainOutput(
            run_id,
            experiment,
            saved_dir,
            manifest.name,
            manifest.version,
            info["epochs_completed"],
            info["best_epoch"],
            info["best_valid_elbo"],
            0,
            reused=True,
        )
    if not run_id or not tracking.run_exists(run_id):
        run_id = tracking.start_run(
            experiment,
            run_name=f"train-{manifest.name}-{key[:6]}",
            tags={
                "aevb.dataset": manifest.name,
                "aevb.dataset_version": manifest.version,
                "aevb.run_key": key,
            },
        )
        _write_atomic(os.path.join(ckpt_dir, "run_id"), run_id)
    tracking.log_params(
        run_id,
        {
            "model": to_dict(model),
            "train": to_dict(train_config),
            "dataset": {"name": manifest.name, "version": manifest.version},
        },
    )
    tracking.log_dataset_input(
        run_id,
        manifest.name,
        manifest.version,
        f"{root.rstrip('/')}/datasets/{manifest.name}/{manifest.version}",
    )

    def make_train_data(epoch: int) -> tf.data.Dataset:
        return datasets.make_tf_dataset(
            root,
            manifest.name,
            manifest.version,
            C.TRAIN,
            train_config.batch_size,
            shuffle=True,
            seed=train_config.seed,
            epoch=epoch,
        )

    valid = datasets.make_tf_dataset(root, manifest.name, manifest.version, C.VALID, 1000)

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        log.info(
            "epoch %d/%d  train_elbo=%.3f  valid_elbo=%.3f  %.0f ex/s",
            epoch,
            train_config.epochs,
            metrics[C.TRAIN_ELBO],
            metrics.get(C.VALID_ELBO, float("nan")),
            metrics[C.EXAMPLES_PER_SECOND],
        )

    vae = VAE(model, seed=train_config.seed)
    if train_config.theta == "full_vb":  # App. F; `vae` ends up holding the means of q(theta)
        from models.full_vb import fit_vae_full_vb as fit
    try:
        result = fit(
            vae,
            make_train_data,
            valid,
            manifest.rows[C.TRAIN],
            train_config,
            checkpoint_dir=os.path.join(ckpt_dir, "ckpt"),
            on_epoch_end=on_epoch_end,
        )
    except TrainingDivergedError as exc:
        tracking.set_tags(run_id, {"aevb.failure": str(exc)[:500]})
        tracking.end_run(run_id, failed=True)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a diverged run must not be resumed or reused
        raise
    if result.resumed_from_epoch:
        log.info("train: resumed from epoch %d checkpoint", result.resumed_from_epoch)
    save_model(
        vae,
        saved_dir,
        extra={
            "dataset": manifest.name,
            "dataset_version": manifest.version,
            "run_id": run_id,
            "scale": manifest.scale,
        },
    )
    tracking.set_tags(
        run_id, {"aevb.best_epoch": result.best_epoch, "aevb.stopped_early": result.stopped_early}
    )
    tracking.log_training_plots(  # PNGs under plots/ (tasks/plots.py)
        run_id, vae, root, manifest.name, manifest.version, result.history, train_config.seed
    )
    tracking.end_run(run_id)  # later stages (evaluate, register) may still log to a finished run
    _write_atomic(
        os.path.join(ckpt_dir, "DONE"),
        json.dumps(
            {
                "epochs_completed": result.epochs_completed,
                "best_epoch": result.best_epoch,
                "best_valid_elbo": result.best_valid_elbo,
            }
        ),
    )
    return TrainOutput(
        run_id,
        experiment,
        saved_dir,
        manifest.name,
        manifest.version,
        result.epochs_completed,
        result.best_epoch,
        result.best_valid_elbo,
        result.resumed_from_epoch,
        reused=False,
    )


train_task = task(train, name="train", cache_policy=NO_CACHE)
