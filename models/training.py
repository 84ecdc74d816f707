"""The AEVB training loop (Algorithm 1): minibatch SGVB gradients with a compiled step.

Per step, with M datapoints and L samples each, we maximise the per-datapoint objective

    1/M sum_i L~(theta, phi; x_i)  +  log p(theta) / N

whose gradient is 1/N times that of the paper's minibatch estimator N/M sum_i L~ + log p(theta).
With ``weight_decay = w`` the prior is log p(theta) = -w/2 ||theta||^2 (w = 1: the paper's N(0, I)
approximate MAP); its gradient is added inside the optimiser update (`models.optim`, decay = w/N).

The loop
- draws each step's noise from the stateless seed [train.seed, global step], so the RNG position is
  part of the checkpointed state and the compiled step never retraces;
- checkpoints every epoch (atomically: TF writes the data under a temporary name and then rewrites
  the `checkpoint` index with an atomic rename) the model, optimiser slots and step counter, the
  early-stopping state, the best weights and the metric history, and resumes from the newest
  checkpoint in ``checkpoint_dir``: a resumed run takes exactly the steps an uninterrupted run takes;
- stops early when the validation ELBO has not improved for ``patience`` epochs and returns with
  the best weights assigned;
- raises `TrainingDivergedError` naming the epoch and step as soon as the loss or a gradient is
  NaN/Inf (that update is skipped, and nothing from the failing epoch is checkpointed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from models import constants as C
from models.config import TrainConfig, to_dict
from models.errors import ModelError, TrainingDivergedError
from models.objectives import check_estimator, elbo
from models.optim import make_optimizer

EpochCallback = Callable[[int, dict[str, float]], None]
EVAL_SEED_OFFSET = (
    7919  # validation noise uses seeds [train.seed + offset, batch index]: fixed per epoch
)
# Fields that may change between an interrupted run and its resumption (they do not change a step).
_RESUMABLE_CHANGES = ("epochs", "patience")


@dataclass
class TrainResult:
    epochs_completed: int
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    resumed_from_epoch: int  # 0 when the run started fresh
    history: list[dict[str, float]] = field(
        default_factory=list
    )  # every epoch, including resumed ones


class Trainer:
    """Owns the optimiser, the compiled steps and the checkpointable state for one model."""

    def __init__(self, model: tf.Module, config: TrainConfig, num_train: int):
        check_estimator(config.estimator)
        if num_train < 1:
            raise ModelError(
                f"num_train={num_train!r}: the training split is empty; ingest data with a train split"
            )
        self.model, self.config, self.num_train = model, config, int(num_train)
        self.variables = list(model.trainable_variables)
        self.optimizer = make_optimizer(
            config.optimizer,
            self.variables,
            config.learning_rate,
            decay=config.weight_decay / self.num_train,
        )
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="step"
        )  # completed updates
        # float64: the reported best score is exactly the epoch metric it came from
        self.best_elbo = tf.Variable(
            -math.inf, dtype=tf.float64, trainable=False, name="best_valid_elbo"
        )
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.best_weights = [tf.Variable(v, trainable=False) for v in self.variables]
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        self.fingerprint = tf.Variable(
            self._fingerprint(), dtype=tf.string, trainable=False, name="fingerprint"
        )
        self._seed = tf.constant(config.seed, tf.int32)
        self._sums = tf.Variable(
            tf.zeros([4]), trainable=False
        )  # sum of elbo, kl, reconstruction; count
        self._train_step = tf.function(self._train_step_impl, jit_compile=config.jit_compile)
        self._eval_step = tf.function(self._eval_step_impl, jit_compile=config.jit_compile)

    def _fingerprint(self) -> str:
        train = {k: v for k, v in to_dict(self.config).items() if k not in _RESUMABLE_CHANGES}
        model_cfg = getattr(self.model, "config", None)
        model = to_dict(model_cfg) if dataclasses.is_dataclass(model_cfg) else None
        return json.dumps(
            {"train": train, "model": model, "num_train": self.num_train}, sort_keys=True
        )

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            step=self.step,
            best_elbo=self.best_elbo,
            best_epoch=self.best_epoch,
            bad_epochs=self.bad_epochs,
            best_weights=self.best_weights,
            history=self.history,
            fingerprint=self.fingerprint,
        )

    # -- compiled steps ----------------------------------------------------------------------------
    def _train_step_impl(self, x: tf.Tensor) -> tf.Tensor:
        """One SGVB update on batch x [M, D]; returns False (and skips the update) on NaN/Inf."""
        cfg = self.config
        seed = tf.stack([self._seed, tf.cast(self.step, tf.int32)])
        with tf.GradientTape() as tape:
            bound = elbo(self.model, x, seed, cfg.estimator, cfg.num_samples)
            loss = -tf.reduce_mean(bound.elbo)
        grads = tape.gradient(loss, self.variables)
        # NaN/Inf anywhere makes this sum non-finite: one cheap pass instead of is_finite per element.
        finite = tf.math.is_finite(loss + tf.add_n([tf.reduce_sum(g) for g in grads]))

        def update() -> tf.Tensor:
            self.optimizer.apply(grads, self.variables)
            self.step.assign_add(1)
            m = tf.cast(tf.shape(x)[0], tf.float32)
            self._sums.assign_add(
                tf.stack(
                    [
                        tf.reduce_sum(bound.elbo),
                        tf.reduce_sum(bound.kl),
                        tf.reduce_sum(bound.reconstruction),
                        m,
                    ]
                )
            )
            return tf.constant(True)

        return tf.cond(finite, update, lambda: tf.constant(False))

    def _eval_step_impl(self, x: tf.Tensor, seed: tf.Tensor) -> None:
        bound = elbo(self.model, x, seed, "B", 1)
        m = tf.cast(tf.shape(x)[0], tf.float32)
        self._sums.assign_add(
            tf.stack(
                [
                    tf.reduce_sum(bound.elbo),
                    tf.reduce_sum(bound.kl),
                    tf.reduce_sum(bound.reconstruction),
                    m,
                ]
            )
        )

    def _read_sums(self) -> tuple[float, float, float, float]:
        elbo_sum, kl_sum, rec_sum, n = (float(v) for v in self._sums.numpy())
        n = max(n, 1.0)
        return elbo_sum / n, kl_sum / n, rec_sum / n, n

    # -- epochs ------------------------------------------------------------------------------------
    def train_epoch(self, data: tf.data.Dataset, epoch: int) -> dict[str, float]:
        """One pass over ``data`` ([M, D] float32 batches); mean training bound, KL, reconstruction."""
        self._sums.assign(tf.zeros([4]))
        start = time.perf_counter()
        for step_in_epoch, x in enumerate(data, start=1):
            if not bool(self._train_step(x)):
                global_step = int(self.step.numpy()) + 1
                raise TrainingDivergedError(
                    f"training diverged: the loss or a gradient is NaN/Inf at epoch {epoch}, step {step_in_epoch} "
                    f"of the epoch (global step {global_step}); the update was skipped and the last good "
                    f"checkpoint is epoch {epoch - 1}. Fix: check the inputs for NaN/Inf and their scaling, lower "
                    "train.learning_rate, or use model.likelihood='continuous_bernoulli'/'gaussian' for "
                    "non-binary data",
                    epoch=epoch,
                    step=global_step,
                )
        seconds = time.perf_counter() - start
        if int(self._sums[3].numpy()) == 0:
            raise ModelError(
                f"epoch {epoch}: the training data yielded no batches; make_train_data(epoch) must "
                "return a non-empty dataset of [batch, D] float32 tensors"
            )
        mean_elbo, mean_kl, mean_rec, n = self._read_sums()
        return {
            C.TRAIN_ELBO: mean_elbo,
            C.TRAIN_KL: mean_kl,
            C.TRAIN_RECONSTRUCTION: mean_rec,
            C.EXAMPLES_PER_SECOND: n / max(seconds, 1e-9),
        }

    def evaluate(self, data: tf.data.Dataset, prefix: str = C.VALID) -> dict[str, float]:
        """Mean ELBO (estimator B, L=1, fixed seeds), KL and reconstruction; never moves weights."""
        self._sums.assign(tf.zeros([4]))
        for i, x in enumerate(data):
            self._eval_step(x, tf.constant([self.config.seed + EVAL_SEED_OFFSET, i], tf.int32))
        mean_elbo, mean_kl, mean_rec, _ = self._read_sums()
        return {
            C.metric_key(prefix, "elbo"): mean_elbo,
            C.metric_key(prefix, "kl"): mean_kl,
            C.metric_key(prefix, "reconstruction"): mean_rec,
        }

    # -- bookkeeping -------------------------------------------------------------------------------
    def record_epoch(self, epoch: int, score: float) -> None:
        """Update best weights / patience counters with this epoch's validation score."""
        if score > float(self.best_elbo.numpy()):
            self.best_elbo.assign(score)
            self.best_epoch.assign(epoch)
            self.bad_epochs.assign(0)
            for b, v in zip(self.best_weights, self.variables, strict=True):
                b.assign(v)
        else:
            self.bad_epochs.assign_add(1)
        self.epoch.assign(epoch)

    def patience_exhausted(self) -> bool:
        return bool(self.config.patience) and int(self.bad_epochs.numpy()) >= self.config.patience

    def read_history(self) -> list[dict[str, float]]:
        return json.loads(self.history.numpy().decode())

    def restore(self, manager: tf.train.CheckpointManager, checkpoint_dir: str) -> int:
        """Restore the newest checkpoint if there is one; returns its epoch (0 when starting fresh)."""
        path = manager.latest_checkpoint
        if not path:
            return 0
        try:
            saved = tf.train.load_variable(path, "fingerprint/.ATTRIBUTES/VARIABLE_VALUE").decode()
        except (tf.errors.NotFoundError, ValueError) as exc:
            raise ModelError(
                f"{checkpoint_dir}: checkpoint {path} was not written by this trainer; "
                "delete the folder or pass another checkpoint_dir"
            ) from exc
        if saved != self._fingerprint():
            raise ModelError(
                f"{checkpoint_dir}: the checkpoint was written for a different model/train config "
                f"(saved {saved}, now {self._fingerprint()}); only {', '.join(_RESUMABLE_CHANGES)} "
                "may change on resume. Delete the folder or pass another checkpoint_dir"
            )
        try:
            self.checkpoint().restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise ModelError(
                f"{checkpoint_dir}: cannot restore {path}: {exc}; delete the folder to start over"
            ) from exc
        return int(self.epoch.numpy())


def fit(
    model: tf.Module,
    make_train_data: Callable[[int], tf.data.Dataset],
    valid_data: tf.data.Dataset | None,
    num_train: int,
    config: TrainConfig,
    checkpoint_dir: str | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train ``model`` in place; returns with the best (by validation ELBO) weights assigned.

    make_train_data(epoch) must return that epoch's shuffled batches, [batch, D] float32, as a
    deterministic function of the epoch (1-based), so shuffling is the same after a resume.
    Without ``valid_data`` the training bound of the epoch is the early-stopping score. The
    callback runs after the epoch's checkpoint is written, with the metrics of that epoch.
    """
    trainer = Trainer(model, config, num_train)
    manager = None
    if checkpoint_dir:
        manager = tf.train.CheckpointManager(trainer.checkpoint(), checkpoint_dir, max_to_keep=2)
    resumed_from = trainer.restore(manager, checkpoint_dir) if manager is not None else 0
    return run_epochs(
        trainer, manager, resumed_from, make_train_data, valid_data, config, on_epoch_end
    )


def run_epochs(
    trainer: Trainer,
    manager: tf.train.CheckpointManager | None,
    resumed_from: int,
    make_epoch_data: Callable[[int], Any],
    valid_data: tf.data.Dataset | None,
    config: TrainConfig,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """The epoch loop shared by `fit` and `models.distributed.fit_distributed`: train, validate,
    stop on NaN, keep the best weights, checkpoint, call back; early stopping on patience."""
    history = trainer.read_history()
    epoch = int(trainer.epoch.numpy())
    stopped_early = trainer.patience_exhausted() and epoch < config.epochs
    while not stopped_early and epoch < config.epochs:
        epoch += 1
        metrics = trainer.train_epoch(make_epoch_data(epoch), epoch)
        if valid_data is not None:
            metrics.update(trainer.evaluate(valid_data))
        score = metrics.get(C.VALID_ELBO, metrics[C.TRAIN_ELBO])
        if not math.isfinite(score):
            raise TrainingDivergedError(
                f"training diverged: the validation ELBO is {score} after epoch {epoch} (global step "
                f"{int(trainer.step.numpy())}); check the validation inputs for NaN/Inf or out-of-range values "
                "for model.likelihood",
                epoch=epoch,
                step=int(trainer.step.numpy()),
            )
        trainer.record_epoch(epoch, score)
        metrics["epoch"] = float(epoch)
        history.append(metrics)
        trainer.history.assign(json.dumps(history))
        if manager is not None:
            manager.save(checkpoint_number=epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        stopped_early = trainer.patience_exhausted() and epoch < config.epochs
    for v, b in zip(trainer.variables, trainer.best_weights, strict=True):
        v.assign(b)
    return TrainResult(
        epochs_completed=epoch,
        best_epoch=int(trainer.best_epoch.numpy()),
        best_valid_elbo=float(trainer.best_elbo.numpy()),
        stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        history=history,
    )


__all__ = ["EpochCallback", "TrainResult", "Trainer", "fit"]
