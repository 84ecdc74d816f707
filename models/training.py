"""The one epoch loop (`run_epochs`) every trainer shares, and the AEVB trainer (Algorithm 1).

Per step, with M datapoints and L samples each, `Trainer` maximises the per-datapoint objective

    1/M sum_i L~(theta, phi; x_i)  +  log p(theta) / N

whose gradient is 1/N times that of the paper's minibatch estimator N/M sum_i L~ + log p(theta).
With ``weight_decay = w`` the prior is log p(theta) = -w/2 ||theta||^2 (w = 1: the paper's N(0, I)
approximate MAP); its gradient is added inside the optimiser update (`models.optim.for_training`).

`run_epochs` drives any `Step` (`Trainer`, `models.distributed`, `models.full_vb`, and the
baselines `models.wake_sleep` / `models.mcem` in `models.experiments`). Each step draws its noise
from the stateless seed [train.seed, global step], so the RNG position is part of the checkpointed
state and a compiled step never retraces. The loop
- refuses to resume a checkpoint written for another model/train config (`fingerprint`);
- raises `TrainingDivergedError` naming the epoch and global step when an update is not finite:
  steps check the loss and gradients *before* applying (`Optimizer.apply_if_finite`), so the
  weights and optimiser slots stay those of the last good step, and nothing of the failing epoch
  is checkpointed; a NaN/Inf validation ELBO stops it the same way;
- checkpoints every epoch (atomically: TF writes the data under a temporary name and then rewrites
  the `checkpoint` index with an atomic rename) the step's model and optimiser state and the
  `LoopState`, and resumes from the newest checkpoint: a resumed run takes exactly the steps an
  uninterrupted run takes;
- stops early when the validation ELBO has not improved for ``patience`` epochs and returns with
  the best weights assigned; records the history and calls back after each checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import tensorflow as tf

from models import constants as C
from models.config import TrainConfig, to_dict
from models.errors import ModelError, TrainingDivergedError
from models.objectives import check_estimator, elbo
from models.optim import for_training
from models.precision import compute_dtype

EpochCallback = Callable[[int, dict[str, float]], None]
# Fields that may change between an interrupted run and its resumption (they do not change a step).
_RESUMABLE_CHANGES = ("epochs", "patience")


@dataclass
class TrainResult:
    epochs_completed: int
    best_epoch: int
    best_valid_elbo: float
    stopped_early: bool
    resumed_from_epoch: int  # 0 when the run started fresh
    history: list[dict[str, float]] = field(default_factory=list)  # every epoch, resumed ones too


def check_num_train(num_train: int) -> int:
    if num_train < 1:
        raise ModelError(
            f"num_train={num_train!r}: the training split is empty; ingest data with a train split"
        )
    return int(num_train)


def fingerprint(config: TrainConfig, model: Any, num_train: int, **trainer: Any) -> str:
    """What a checkpoint must have been written with to be resumed (all but epochs, patience).

    ``trainer``: settings of a non-default trainer (full VB, baselines); the default trainer adds
    none, so its fingerprint, and hence its existing checkpoints, stay as they were.
    """
    train = {k: v for k, v in to_dict(config).items() if k not in _RESUMABLE_CHANGES}
    if train.get("precision") == "float32":
        del train["precision"]  # the default: checkpoints written before the key existed resume
    model_cfg = getattr(model, "config", None)
    model_doc = to_dict(model_cfg) if dataclasses.is_dataclass(model_cfg) else None
    doc: dict[str, Any] = {"train": train, "model": model_doc, "num_train": num_train}
    if trainer:
        doc["trainer"] = trainer
    return json.dumps(doc, sort_keys=True)


class LoopState:
    """The loop's checkpointed bookkeeping: counters, early stopping, best weights, history."""

    def __init__(self, variables: Sequence[tf.Variable], fingerprint: str):
        self.variables = list(variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # updates done
        # float64: the reported best score is exactly the epoch metric it came from
        self.best_elbo = tf.Variable(
            -math.inf, dtype=tf.float64, trainable=False, name="best_valid_elbo"
        )
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.best_weights = [tf.Variable(v, trainable=False) for v in self.variables]
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        self.fingerprint = tf.Variable(
            fingerprint, dtype=tf.string, trainable=False, name="fingerprint"
        )

    def items(self) -> dict[str, Any]:
        """Checkpoint entries (keys as written by every earlier version of `Trainer`)."""
        names = ("epoch", "step", "best_elbo", "best_epoch", "bad_epochs", "best_weights")
        return {n: getattr(self, n) for n in (*names, "history", "fingerprint")}

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

    def patience_exhausted(self, patience: int) -> bool:
        return bool(patience) and int(self.bad_epochs.numpy()) >= patience

    def read_history(self) -> list[dict[str, float]]:
        return json.loads(self.history.numpy().decode())


class MetricSums:
    """Sums over an epoch's datapoints of named per-datapoint quantities, plus the count.

    Held in one tf.Variable so compiled steps add to it without a host round trip per step.
    """

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self.total = tf.Variable(tf.zeros([len(self.names) + 1]), trainable=False, name="sums")

    def add(self, count: tf.Tensor, *sums: tf.Tensor) -> None:
        """Graph code: ``sums`` are batch sums in the order of ``names``; ``count`` the batch size."""
        self.total.assign_add(tf.stack([*sums, count]))

    def reset(self) -> None:
        self.total.assign(tf.zeros_like(self.total))

    def means(self) -> tuple[dict[str, float], float]:
        """Per-datapoint means since `reset` and the number of datapoints."""
        *sums, n = (float(v) for v in self.total.numpy())
        return {k: s / max(n, 1.0) for k, s in zip(self.names, sums, strict=True)}, n


def batch_size(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.shape(x)[0], tf.float32)


class Evaluator:
    """Mean ELBO (estimator B, L = 1), KL and reconstruction of ``model``; never moves weights.

    Noise from the seeds [train.seed + EVAL_SEED_OFFSET, batch index]: the same draws every epoch.
    """

    def __init__(self, model: tf.Module, config: TrainConfig):
        self.model, self.seed = model, config.seed + C.EVAL_SEED_OFFSET
        self.sums = MetricSums(("elbo", "kl", "reconstruction"))
        self.precision = config.precision
        self._step = tf.function(self._step_impl, jit_compile=config.jit_compile, autograph=False)

    def _step_impl(self, x: tf.Tensor, seed: tf.Tensor) -> None:
        with compute_dtype(self.precision):
            bound = elbo(self.model, x, seed, "B", 1)
        parts = (bound.elbo, bound.kl, bound.reconstruction)
        self.sums.add(batch_size(x), *(tf.reduce_sum(p) for p in parts))

    def __call__(self, data: tf.data.Dataset, prefix: str = C.VALID) -> dict[str, float]:
        """Means over every row of ``data`` (a last partial batch counts); ModelError when it has
        no rows: the mean of nothing would read 0.0 and win model selection for epoch 1."""
        self.sums.reset()
        for i, x in enumerate(data):
            self._step(x, tf.constant([self.seed, i], tf.int32))
        means, n = self.sums.means()
        if n == 0:
            raise ModelError(
                f"the {prefix} data yielded no rows, so there is no {prefix} ELBO to select the "
                "best epoch by; pass a non-empty validation dataset (or valid_data=None: the "
                "training ELBO of each epoch is then the criterion)"
            )
        return {C.metric_key(prefix, k): v for k, v in means.items()}


class Step(Protocol):
    """A trainer as `run_epochs` drives it.

    ``update(batch)`` is one compiled, guarded update: it returns False (bool tensor) and changes
    nothing when the loss or a gradient is NaN/Inf; otherwise it adds the batch to ``sums`` and
    counts ``state.step``. ``checkpoint()`` holds ``state.items()`` and everything else a resume
    needs (model, optimiser slots, ...).
    """

    config: TrainConfig
    state: LoopState
    sums: MetricSums

    def update(self, batch: Any) -> tf.Tensor: ...

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]: ...

    def checkpoint(self) -> tf.train.Checkpoint: ...


def train_epoch(step: Step, data: Iterable[Any], epoch: int) -> dict[str, float]:
    """One pass of ``step`` over ``data``: the epoch's mean training metrics and examples/s."""
    step.sums.reset()
    start = time.perf_counter()
    for step_in_epoch, batch in enumerate(data, start=1):
        if not bool(step.update(batch)):
            global_step = int(step.state.step.numpy()) + 1
            raise TrainingDivergedError(
                f"training diverged: the loss or a gradient is NaN/Inf at epoch {epoch}, step "
                f"{step_in_epoch} of the epoch (global step {global_step}); the update was skipped "
                f"and the last good checkpoint is epoch {epoch - 1}. Fix: check the inputs for "
                "NaN/Inf and their scaling, lower train.learning_rate, or use model.likelihood="
                "'continuous_bernoulli'/'gaussian' for non-binary data",
                epoch=epoch,
                step=global_step,
            )
    seconds = time.perf_counter() - start
    means, n = step.sums.means()
    if n == 0:
        raise ModelError(
            f"epoch {epoch}: the training data yielded no batches; make_train_data(epoch) must "
            "return a non-empty dataset of [batch, D] float32 tensors"
        )
    return {**means, C.EXAMPLES_PER_SECOND: n / max(seconds, 1e-9)}


def _resume(step: Step, manager: tf.train.CheckpointManager, checkpoint_dir: str) -> int:
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
    now = step.state.fingerprint.numpy().decode()
    if saved != now:
        raise ModelError(
            f"{checkpoint_dir}: the checkpoint was written for a different model/train config "
            f"(saved {saved}, now {now}); only {', '.join(_RESUMABLE_CHANGES)} "
            "may change on resume. Delete the folder or pass another checkpoint_dir"
        )
    try:
        manager.checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise ModelError(
            f"{checkpoint_dir}: cannot restore {path}: {exc}; delete the folder to start over"
        ) from exc
    return int(step.state.epoch.numpy())


def run_epochs(
    step: Step,
    make_epoch_data: Callable[[int], Iterable[Any]],
    valid_data: tf.data.Dataset | None = None,
    checkpoint_dir: str | None = None,
    on_epoch_end: EpochCallback | None = None,
    *,
    save_dir: str | None = None,
    keep_best: bool = True,
) -> TrainResult:
    """Train ``step`` for ``step.config.epochs`` epochs (see the module docstring).

    make_epoch_data(epoch) gives epoch's (1-based) batches. Without ``valid_data`` the training
    ELBO of the epoch is the early-stopping score. ``save_dir``: write checkpoints there instead
    of ``checkpoint_dir`` (distributed workers). ``keep_best=False`` (learning curves, baselines
    without an ELBO): no best-weight tracking, the run ends with the last weights.
    """
    config, state = step.config, step.state
    manager, resumed_from = None, 0
    if checkpoint_dir:
        manager = tf.train.CheckpointManager(
            step.checkpoint(), save_dir or checkpoint_dir, max_to_keep=2
        )
        resumed_from = _resume(step, manager, checkpoint_dir)
    history = state.read_history()
    epoch = int(state.epoch.numpy())
    stopped_early = state.patience_exhausted(config.patience) and epoch < config.epochs
    while not stopped_early and epoch < config.epochs:
        epoch += 1
        metrics = train_epoch(step, make_epoch_data(epoch), epoch)
        if valid_data is not None:
            metrics.update(step.evaluate(valid_data))
        score = metrics.get(C.VALID_ELBO, metrics.get(C.TRAIN_ELBO, math.nan))
        if (keep_best or valid_data is not None) and not math.isfinite(score):
            raise TrainingDivergedError(
                f"training diverged: the validation ELBO is {score} after epoch {epoch} (global "
                f"step {int(state.step.numpy())}); check the validation inputs for NaN/Inf or "
                "out-of-range values for model.likelihood",
                epoch=epoch,
                step=int(state.step.numpy()),
            )
        if keep_best:
            state.record_epoch(epoch, score)
        state.epoch.assign(epoch)
        metrics["epoch"] = float(epoch)
        history.append(metrics)
        state.history.assign(json.dumps(history))
        if manager is not None:
            manager.save(checkpoint_number=epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        stopped_early = state.patience_exhausted(config.patience) and epoch < config.epochs
    if keep_best:
        for v, b in zip(state.variables, state.best_weights, strict=True):
            v.assign(b)
    return TrainResult(
        epochs_completed=epoch,
        best_epoch=int(state.best_epoch.numpy()),
        best_valid_elbo=float(state.best_elbo.numpy()),
        stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        history=history,
    )


class Trainer:
    """The AEVB `Step`: one SGVB gradient update per minibatch on all of a `VAE`'s parameters."""

    def __init__(self, model: tf.Module, config: TrainConfig, num_train: int):
        check_estimator(config.estimator)
        self.model, self.config, self.num_train = model, config, check_num_train(num_train)
        self.variables = list(model.trainable_variables)
        self.optimizer = for_training(config, self.variables, self.num_train)
        self.state = LoopState(self.variables, fingerprint(config, model, self.num_train))
        self.sums = MetricSums((C.TRAIN_ELBO, C.TRAIN_KL, C.TRAIN_RECONSTRUCTION))
        self._evaluator = Evaluator(model, config)
        self._seed = tf.constant(config.seed, tf.int32)
        self.update = tf.function(self._update, jit_compile=config.jit_compile, autograph=False)

    def _update(self, x: tf.Tensor) -> tf.Tensor:
        """One SGVB update on batch x [M, D]; False (and no update) on NaN/Inf."""
        cfg = self.config
        seed = tf.stack([self._seed, tf.cast(self.state.step, tf.int32)])
        with tf.GradientTape() as tape, compute_dtype(cfg.precision):
            bound = elbo(self.model, x, seed, cfg.estimator, cfg.num_samples)
            loss = -tf.reduce_mean(bound.elbo)
        grads = tape.gradient(loss, self.variables)

        def count() -> None:
            self.state.step.assign_add(1)
            parts = (bound.elbo, bound.kl, bound.reconstruction)
            self.sums.add(batch_size(x), *(tf.reduce_sum(p) for p in parts))

        return self.optimizer.apply_if_finite(grads, self.variables, loss, then=count)

    def evaluate(self, data: tf.data.Dataset, prefix: str = C.VALID) -> dict[str, float]:
        """Mean ELBO (estimator B, L=1, fixed seeds), KL and reconstruction; never moves weights."""
        return self._evaluator(data, prefix)

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, **self.state.items())


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
    return run_epochs(trainer, make_train_data, valid_data, checkpoint_dir, on_epoch_end)


__all__ = [
    "EpochCallback",
    "Evaluator",
    "LoopState",
    "MetricSums",
    "Step",
    "TrainResult",
    "Trainer",
    "fingerprint",
    "fit",
    "run_epochs",
    "train_epoch",
]
