"""Train stage: fit the AEVB model on a Parquet dataset version and track it in MLflow.

The checkpoint folder is keyed by (model config, train config, dataset version). It holds the
per-epoch TF checkpoints, the MLflow run id and, once training finished, `DONE`. So:
- a killed run, started again with the same config and data, resumes at its last epoch and keeps
  logging into the same MLflow run;
- a finished run is not repeated (pass force=True to retrain anyway).

Every finished run has its model logged (a pyfunc from code, `tracking.log_pyfunc_model`), so
`runs:/<run id>/model` works with evaluate, export, score, sample and restore without a registry;
registering it is the pipeline's decision (tasks/register.py reuses this logged model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.config import ModelConfig, TrainConfig, check_architecture, check_binarize, to_dict
from models.discrete import EVAL_DATA_SEED, InputTransform, convert_epoch_metrics, input_transform
from models.errors import StorageError, TrainingDivergedError
from tasks import run_records, scoring, tracking
from tasks.logs import logger
from tasks.run_records import PLOTS_ARTIFACT
from tasks.store import datasets, fs, publish
from tasks.store.roots import default_checkpoint_root

CHECKPOINT_FIX = "or put checkpoints elsewhere (AEVB_CHECKPOINT_DIR)"


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
    plots: tuple[str, ...] = ()  # artifact paths in the MLflow run, e.g. plots/manifold.png
    cluster_role: str = ""  # multi_worker: "chief of N workers" / "worker i of N" (no run, model)
    model_uri: str = ""  # runs:/<run id>/model, the logged pyfunc ("" on non-chief workers)


def experiment_name(dataset: str) -> str:
    return f"aevb-{dataset}"


def run_key(model, train: TrainConfig, dataset: str, version: str, inputs: str = "none") -> str:
    """What identifies a training: the model and train configs, the dataset version, and the
    input transform (models/discrete.py; "none", the only one before it existed, adds nothing)."""
    train_dict = {**to_dict(train), **({"inputs": inputs} if inputs != "none" else {})}
    if train_dict.get("strategy") == "default":  # keys of runs made before the option stay
        del train_dict["strategy"]
    blob = json.dumps(
        {"model": to_dict(model), "train": train_dict, "dataset": dataset, "version": version},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Plan:
    root: str
    manifest: datasets.DatasetManifest
    model: ModelConfig
    key: str
    ckpt_dir: str
    transform: InputTransform | None = None  # what the training inputs go through

    def state(self, name: str) -> str | None:
        """A state file of the checkpoint folder (run_id, DONE), None while absent."""
        return (fs.read_text(os.path.join(self.ckpt_dir, name)) or "").strip() or None

    @property
    def saved_dir(self) -> str:
        return os.path.join(self.ckpt_dir, "saved_model")

    @property
    def experiment(self) -> str:
        return experiment_name(self.manifest.name)

    def output(
        self, run_id: str, done: dict, resumed_from: int, reused: bool, plots: tuple[str, ...] = ()
    ) -> TrainOutput:
        return TrainOutput(
            run_id,
            self.experiment,
            self.saved_dir,
            self.manifest.name,
            self.manifest.version,
            done["epochs_completed"],
            done["best_epoch"],
            done["best_valid_elbo"],
            resumed_from,
            reused=reused,
            plots=tuple(sorted(plots)),
            model_uri=run_records.model_uri(run_id) if run_id else "",
        )


def plan_training(
    dataset: str,
    model: ModelConfig,
    train_config: TrainConfig,
    data_root: str | None,
    version: str | None,
    checkpoint_root: str | None,
) -> _Plan:
    """Resolve the dataset, check the model fits it, and name the checkpoint folder."""
    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    model = dataclasses.replace(model, feature_shape=tuple(manifest.feature_shape))
    datasets.check_model_inputs(manifest, model.likelihood)
    check_binarize(train_config.binarize, model.likelihood)
    datasets.check_trainable(manifest, train_config.batch_size)
    check_architecture(model, train_config.theta, manifest.name)
    t = input_transform(model.likelihood, train_config.binarize, scoring.manifest_levels(manifest))
    key = run_key(model, train_config, manifest.name, manifest.version, t.kind)
    base = checkpoint_root or default_checkpoint_root(root)
    return _Plan(root, manifest, model, key, os.path.join(base, f"{manifest.name}-{key}"), t)


def _open_run(plan: _Plan, train_config: TrainConfig) -> str:
    """The MLflow run of this training: the one a killed attempt started, else a new one."""
    m = plan.manifest
    run_id = plan.state("run_id")
    if not run_id or not tracking.run_exists(run_id):
        run_id = tracking.start_run(
            plan.experiment,
            run_name=f"train-{m.name}-{plan.key[:6]}",
            tags={
                "aevb.dataset": m.name,
                "aevb.dataset_version": m.version,
                "aevb.run_key": plan.key,
            },
        )
        publish.write_text_atomic(os.path.join(plan.ckpt_dir, "run_id"), run_id)
    tracking.log_params(
        run_id,
        {
            "model": to_dict(plan.model),
            "train": to_dict(train_config),
            "dataset": {"name": m.name, "version": m.version},
        },
    )
    tracking.log_dataset_input(
        run_id, m.name, m.version, datasets.version_dir(plan.root, m.name, m.version)
    )
    tracking.set_tags(run_id, run_records.lineage_tags(plan.root, plan.manifest))
    return run_id


def _fit(plan: _Plan, train_config: TrainConfig, run_id: str | None):
    """Train the VAE with per-epoch MLflow metrics (when ``run_id``) and log lines; returns
    (vae, result). ``train.strategy`` other than "default": `models.distributed.fit_distributed`."""
    from models.training import fit

    if train_config.strategy != "default":  # the strategy comes before any other TF op
        from models.distributed import fit_distributed, strategy_for

        strategy = strategy_for(train_config.strategy)
        fit = functools.partial(fit_distributed, strategy=strategy, agreement=plan.key)
    from models.vae import VAE
    from tasks.store.streaming import make_tf_dataset

    m, log, transform = plan.manifest, logger(), plan.transform

    def make_train_data(epoch: int):
        return make_tf_dataset(
            plan.root,
            m.name,
            m.version,
            C.TRAIN,
            train_config.batch_size,
            shuffle=True,
            seed=train_config.seed,
            epoch=epoch,
            transform=transform,
        )

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        metrics = convert_epoch_metrics(metrics, transform, m.input_dim)  # about the stored data
        if run_id:
            tracking.log_metrics(
                run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch
            )
        log.info(
            "epoch %d/%d  train_elbo=%.3f  valid_elbo=%.3f  %.0f ex/s",
            epoch,
            train_config.epochs,
            metrics[C.TRAIN_ELBO],
            metrics.get(C.VALID_ELBO, float("nan")),
            metrics[C.EXAMPLES_PER_SECOND],
        )
        publish.fault_point("train_after_epoch")

    vae = VAE(plan.model, seed=train_config.seed)
    if train_config.theta == "full_vb":  # App. F; `vae` ends up holding the means of q(theta)
        from models.full_vb import fit_vae_full_vb as fit
    if (n_valid := m.rows.get(C.VALID, 0)) < train_config.batch_size:
        log.warning("train: the best epoch is chosen on %d valid rows (< one batch)", n_valid)
    valid = make_tf_dataset(  # every row counts
        plan.root, m.name, m.version, C.VALID, 1000, seed=EVAL_DATA_SEED, transform=transform
    )
    result = fit(
        vae,
        make_train_data,
        valid,
        m.rows[C.TRAIN],
        train_config,
        checkpoint_dir=os.path.join(plan.ckpt_dir, "ckpt"),
        on_epoch_end=on_epoch_end,
    )
    return vae, result


def train(
    dataset: str,
    model: ModelConfig,
    train_config: TrainConfig,
    data_root: str | None = None,
    version: str | None = None,
    checkpoint_root: str | None = None,
    force: bool = False,
) -> TrainOutput:
    """Train on the dataset's train split (validation: valid split); returns where the model is.

    A failure leaves the checkpoint folder only if it holds a checkpoint to resume from; storage
    faults (read-only or full checkpoint folder) are one-line `StorageError`s naming it.
    """
    plan = plan_training(dataset, model, train_config, data_root, version, checkpoint_root)
    log = logger()
    role = ""
    if train_config.strategy == "multi_worker":  # before anything is removed or written
        role, worker_output = _join_cluster(plan, train_config, force)
        if worker_output is not None:
            return worker_output
    if force and os.path.isdir(plan.ckpt_dir):
        with fs.storage_guard(plan.ckpt_dir):
            shutil.rmtree(plan.ckpt_dir)
    finished = _finished(plan)
    if finished:
        run_id, done = finished
        log.info(
            "train: identical finished run %s found (config+data unchanged); not retraining", run_id
        )
        plots_logged = tracking.list_artifacts(run_id, PLOTS_ARTIFACT)
        # runs finished by releases that did not log their model
        run_records.log_model(run_id, plan.saved_dir, plan.root, plan.manifest)
        output = plan.output(run_id, done, 0, reused=True, plots=plots_logged)
        return dataclasses.replace(output, cluster_role=role)
    try:
        with fs.storage_guard(plan.ckpt_dir, CHECKPOINT_FIX):
            os.makedirs(plan.ckpt_dir, exist_ok=True)
        output = _train_and_save(plan, train_config)
    except BaseException:
        _drop_unresumable(plan.ckpt_dir)
        raise
    return dataclasses.replace(output, cluster_role=role)


def _drop_unresumable(ckpt_dir: str) -> None:
    """Remove a checkpoint folder that holds nothing to resume from (no TF checkpoint yet)."""
    if not os.path.exists(os.path.join(ckpt_dir, "ckpt", "checkpoint")):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the checkpoints folder too, if nothing else is there
            os.rmdir(os.path.dirname(ckpt_dir))


def _train_and_save(plan: _Plan, train_config: TrainConfig) -> TrainOutput:
    from models.saved import save_model

    m, log = plan.manifest, logger()
    run_id = _open_run(plan, train_config)
    try:
        with _checkpoint_faults(plan.ckpt_dir):
            vae, result = _fit(plan, train_config, run_id)
    except TrainingDivergedError as exc:
        tracking.set_tags(run_id, {"aevb.failure": str(exc)[:500]})
        tracking.end_run(run_id, failed=True)
        shutil.rmtree(plan.ckpt_dir, ignore_errors=True)  # a diverged run is never resumed
        raise
    except StorageError as exc:
        with contextlib.suppress(Exception):  # the tracking store may be the full one
            tracking.set_tags(run_id, {"aevb.failure": str(exc)[:500]})
            tracking.end_run(run_id, failed=True)  # a rerun resumes it from its checkpoint
        raise
    if result.resumed_from_epoch:
        log.info("train: resumed from epoch %d checkpoint", result.resumed_from_epoch)
    with _checkpoint_faults(plan.saved_dir):
        extra = {"dataset": m.name, "dataset_version": m.version, "run_id": run_id}
        transform = plan.transform
        extra.update(scale=m.scale, value_range=list(m.value_range), data_levels=transform.levels)
        save_model(vae, plan.saved_dir, extra={**extra, "binarize": train_config.binarize})
    run_records.warn_std_floor(run_id, vae, plan.root, m)
    tracking.set_tags(
        run_id, {"aevb.best_epoch": result.best_epoch, "aevb.stopped_early": result.stopped_early}
    )
    curves = [convert_epoch_metrics(h, transform, m.input_dim) for h in result.history]
    plots_logged = run_records.log_training_plots(
        run_id, vae, plan.root, m, curves, train_config.seed
    )
    run_records.log_model(run_id, plan.saved_dir, plan.root, plan.manifest)
    tracking.end_run(run_id)  # later stages (evaluate, register) may still log to a finished run
    info = _done_info(result)
    info["best_valid_elbo"] += plan.transform.offset(m.input_dim)  # about the stored data
    publish.write_text_atomic(os.path.join(plan.ckpt_dir, "DONE"), json.dumps(info))
    return plan.output(run_id, info, result.resumed_from_epoch, reused=False, plots=plots_logged)


def _done_info(result) -> dict:
    """What DONE records of a `models.training.TrainResult`."""
    keys = ("epochs_completed", "best_epoch", "best_valid_elbo")
    return {k: getattr(result, k) for k in keys}


@contextlib.contextmanager
def _checkpoint_faults(path: str):
    """TensorFlow's checkpoint and SavedModel writes say "No space left on device" or
    "Read-only file system" in a ResourceExhausted/FailedPrecondition/... error: one line instead."""
    import tensorflow as tf

    try:
        yield
    except (OSError, tf.errors.OpError) as exc:
        err = fs.storage_error(exc, path, CHECKPOINT_FIX)
        if err is None:
            raise
        raise err from exc


def _finished(plan: _Plan) -> tuple[str, dict] | None:
    """(run id, DONE info) of this exact training when it finished and is still tracked."""
    run_id, done = plan.state("run_id"), plan.state("DONE")
    if done and run_id and tracking.run_exists(run_id) and os.path.isdir(plan.saved_dir):
        return run_id, json.loads(done)
    return None


def _join_cluster(
    plan: _Plan, train_config: TrainConfig, force: bool
) -> tuple[str, TrainOutput | None]:
    """train.strategy='multi_worker': meet the other workers (TF_CONFIG) and agree on what is
    trained and whether (the chief decides: an identical finished run is reused by everyone).

    The chief returns (role, None) and trains, tracks and saves as usual. Another worker trains
    its share with its own checkpoints beside the chief's folder (shared storage stays safe),
    logs to no MLflow run, saves no model, and returns (role, its TrainOutput).
    """
    from models.distributed import cluster_info, handshake, strategy_for
    from models.errors import ConfigError

    info, strategy = cluster_info(), strategy_for("multi_worker")
    trains = info.is_chief and (force or _finished(plan) is None)  # only the chief's counts
    same, chief_trains = handshake(strategy, plan.key, float(trains))
    if not same:
        raise ConfigError(
            f"train.strategy='multi_worker': the workers do not train the same thing (this is "
            f"{info.task_type} {info.task_index}: dataset {plan.manifest.name}@"
            f"{plan.manifest.version[:12]}, run key {plan.key}); start every worker with the same "
            "--config, overrides and dataset version"
        )
    if info.is_chief:
        return f"chief of {info.num_workers} workers", None
    role = f"{info.task_type} {info.task_index} of {info.num_workers}"
    empty = {"epochs_completed": 0, "best_epoch": 0, "best_valid_elbo": float("nan")}
    if not chief_trains:
        logger().info("train: %s: the chief reuses its finished identical run", role)
        output = plan.output("", empty, 0, reused=True)
        return role, dataclasses.replace(output, saved_model_dir="", cluster_role=role)
    own = f"{plan.ckpt_dir}.{info.task_type}-{info.task_index}"
    if force and os.path.isdir(own):
        shutil.rmtree(own)
    os.makedirs(own, exist_ok=True)
    try:
        with _checkpoint_faults(own):
            _, result = _fit(dataclasses.replace(plan, ckpt_dir=own), train_config, None)
    except TrainingDivergedError:
        shutil.rmtree(own, ignore_errors=True)  # as the chief does: never resumed
        raise
    output = plan.output("", _done_info(result), result.resumed_from_epoch, reused=False)
    return role, dataclasses.replace(output, saved_model_dir="", cluster_role=role)


train_task = task(train, name="train", cache_policy=NO_CACHE)
