"""The AEVB training loop (Algorithm 1): minibatch SGVB gradients with a compiled step.

Per step, with M datapoints and L samples each, we maximise the per-datapoint objective

    1/M sum_i L~(theta, phi; x_i)  +  log p(theta) / N

whose gradient is 1/N times the paper's minibatch estimator N/M sum_i L~ + log p(theta). With
``weight_decay = w`` the prior is log p(theta) = -w/2 ||theta||^2 (w = 1: the paper's N(0, I) MAP).

The loop checkpoints every epoch (atomically, via tf.train.CheckpointManager), resumes from the last
checkpoint in ``checkpoint_dir``, stops early on validation ELBO, keeps the best weights, and raises
`TrainingDivergedError` naming the epoch and step as soon as the loss or a gradient is NaN/Inf.
Seeds are tensors ([seed, step]) so the compiled step never retraces and runs are reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf

from models import constants as C
from models.config import TrainConfig
from models.errors import TrainingDivergedError
from models.objectives import elbo
from models.optim import make_optimizer
from models.vae import VAE

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    epochs_completed: int
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    resumed_from_epoch: int  # 0 when the run started fresh
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Owns the optimiser, the compiled steps and the checkpoint state for one model."""

    def __init__(self, model: VAE, config: TrainConfig, num_train: int):
        self.model, self.config, self.num_train = model, config, int(num_train)
        self.variables = list(model.trainable_variables)
        self.optimizer = make_optimizer(config.optimizer, self.variables, config.learning_rate)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.best_elbo = tf.Variable(-float("inf"), trainable=False, name="best_valid_elbo")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.best_weights = [tf.Variable(v, trainable=False) for v in self.variables]
        self._train_step = tf.function(self._train_step_impl, jit_compile=config.jit_compile)
        self._eval_step = tf.function(self._eval_step_impl, jit_compile=config.jit_compile)

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch=self.epoch,
                                   step=self.step, best_elbo=self.best_elbo, best_epoch=self.best_epoch,
                                   bad_epochs=self.bad_epochs, best_weights=self.best_weights)

    def _train_step_impl(self, x: tf.Tensor, seed: tf.Tensor):
        cfg = self.config
        with tf.GradientTape() as tape:
            bound = elbo(self.model, x, seed, cfg.estimator, cfg.num_samples)
            mean_elbo = tf.reduce_mean(bound.elbo)
            loss = -mean_elbo
            if cfg.weight_decay > 0:
                sq = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.variables])
                loss += 0.5 * cfg.weight_decay * sq / float(self.num_train)
        grads = tape.gradient(loss, self.variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        finite = tf.logical_and(finite, tf.math.is_finite(loss))
        self.optimizer.apply(grads, self.variables)
        return mean_elbo, tf.reduce_mean(bound.kl), tf.reduce_mean(bound.reconstruction), finite

    def _eval_step_impl(self, x: tf.Tensor, seed: tf.Tensor):
        bound = elbo(self.model, x, seed, "B", 1)
        return tf.reduce_sum(bound.elbo), tf.reduce_sum(bound.kl), tf.reduce_sum(bound.reconstruction)

    def train_epoch(self, data: tf.data.Dataset, epoch: int) -> dict[str, float]:
        sums = [0.0, 0.0, 0.0]
        n, start = 0, time.perf_counter()
        for step_in_epoch, x in enumerate(data):
            seed = tf.stack([tf.constant(self.config.seed, tf.int32), tf.cast(self.step.read_value(), tf.int32)])
            e, kl, rec, finite = self._train_step(x, seed)
            if not bool(finite):
                raise TrainingDivergedError(
                    f"training diverged: loss or gradient is NaN/Inf at epoch {epoch}, step {step_in_epoch} "
                    "(global step {}); lower train.learning_rate, check the input scaling, or use "
                    "model.likelihood='continuous_bernoulli'/'gaussian' for non-binary data".format(
                        int(self.step.numpy())),
                    epoch=epoch, step=step_in_epoch)
            self.step.assign_add(1)
            b = int(x.shape[0])
            sums = [s + float(v) * b for s, v in zip(sums, (e, kl, rec))]
            n += b
        seconds = time.perf_counter() - start
        n = max(n, 1)
        return {C.TRAIN_ELBO: sums[0] / n, C.TRAIN_KL: sums[1] / n, C.TRAIN_RECONSTRUCTION: sums[2] / n,
                C.EXAMPLES_PER_SECOND: n / max(seconds, 1e-9)}

    def evaluate(self, data: tf.data.Dataset, prefix: str = C.VALID) -> dict[str, float]:
        """Mean ELBO (estimator B, L=1, fixed seed), KL and reconstruction; never moves weights."""
        sums = [0.0, 0.0, 0.0]
        n = 0
        for i, x in enumerate(data):
            seed = tf.constant([self.config.seed + 7919, i], tf.int32)
            vals = self._eval_step(x, seed)
            sums = [s + float(v) for s, v in zip(sums, vals)]
            n += int(x.shape[0])
        n = max(n, 1)
        return {C.metric_key(prefix, "elbo"): sums[0] / n, C.metric_key(prefix, "kl"): sums[1] / n,
                C.metric_key(prefix, "reconstruction"): sums[2] / n}


def fit(model: VAE, make_train_data: Callable[[int], tf.data.Dataset], valid_data: tf.data.Dataset | None,
        num_train: int, config: TrainConfig, checkpoint_dir: str | None = None,
        on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train ``model`` in place; returns with the best (by validation ELBO) weights assigned.

    make_train_data(epoch) must return that epoch's shuffled batches, [batch, D] float32; making it
    a function of the epoch keeps shuffling deterministic across a resume.
    """
    trainer = Trainer(model, config, num_train)
    ckpt = trainer.checkpoint()
    manager = tf.train.CheckpointManager(ckpt, checkpoint_dir, max_to_keep=2) if checkpoint_dir else None
    resumed_from = 0
    if manager is not None and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        resumed_from = int(trainer.epoch.numpy())
    history: list[dict[str, float]] = []
    stopped_early = False
    for epoch in range(int(trainer.epoch.numpy()) + 1, config.epochs + 1):
        if config.patience and int(trainer.bad_epochs.numpy()) >= config.patience:
            stopped_early = True
            break
        metrics = trainer.train_epoch(make_train_data(epoch), epoch)
        if valid_data is not None:
            metrics.update(trainer.evaluate(valid_data))
        score = metrics.get(C.VALID_ELBO, metrics[C.TRAIN_ELBO])
        if score > float(trainer.best_elbo.numpy()):
            trainer.best_elbo.assign(score)
            trainer.best_epoch.assign(epoch)
            trainer.bad_epochs.assign(0)
            for b, v in zip(trainer.best_weights, trainer.variables):
                b.assign(v)
        else:
            trainer.bad_epochs.assign_add(1)
        trainer.epoch.assign(epoch)
        if manager is not None:
            manager.save(checkpoint_number=epoch)
        metrics["epoch"] = float(epoch)
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    else:
        stopped_early = bool(config.patience) and int(trainer.bad_epochs.numpy()) >= config.patience
    for v, b in zip(trainer.variables, trainer.best_weights):
        v.assign(b)
    return TrainResult(epochs_completed=int(trainer.epoch.numpy()), best_epoch=int(trainer.best_epoch.numpy()),
                       best_valid_elbo=float(trainer.best_elbo.numpy()), stopped_early=stopped_early,
                       resumed_from_epoch=resumed_from, history=history)
