"""Plain-TF optimisers (Adagrad as in the paper; Adam) whose slots are checkpointable tf.Variables.

    Adagrad (Duchi et al., 2011):  G += g^2;               theta -= lr * g / (sqrt(G) + eps)
    Adam (Kingma & Ba, 2014):      m, v moving averages;   theta -= lr_t * m / (sqrt(v) + eps),
                                   lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)

Weight decay has one path: `for_training` builds every trainer's optimiser with decay c = w / N
(w = ``train.weight_decay``, N = training rows), and the update adds c * theta to each gradient of
the *loss*: the gradient of -log p(theta) / N for the prior N(0, I / w) of
`models.objectives.log_prior_theta`, which makes the per-datapoint loss the paper's approximate
MAP objective. ``decayed`` limits the prior to some of the variables (full VB: the encoder only).

`Optimizer.apply_if_finite` is the guarded update every trainer uses: it checks the loss and the
gradients first and applies nothing (weights, slots, step counter) when any is NaN/Inf.

Written out rather than taken from Keras so the compiled step, the checkpoint and the SavedModel
all see ordinary `tf.Variable`s, with no Keras-2/Keras-3 split in between. The updates use TF's
fused kernels (`ResourceApplyAdagradV2`, `ResourceApplyAdam`), which also compile under XLA.
Slot variables and the step counter ``iterations`` are checkpointed, so a resumed run continues
with exactly the optimiser state it stopped with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from models.config import TrainConfig
from models.errors import ConfigError


def all_finite(loss: tf.Tensor, grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """True when ``loss`` and every gradient are finite (bool scalar tensor).

    NaN/Inf anywhere makes the sum non-finite: one cheap pass instead of is_finite per element.
    """
    return tf.math.is_finite(tf.reduce_sum(loss) + tf.add_n([tf.reduce_sum(g) for g in grads]))


class Optimizer(tf.Module):
    """Base: the learning rate, the L2 ``decay`` (on ``decayed``, default all) and ``iterations``."""

    def __init__(
        self,
        variables: list[tf.Variable],
        learning_rate: float,
        name: str,
        decay: float = 0.0,
        decayed: Sequence[tf.Variable] | None = None,
    ):
        super().__init__(name=name)
        self.learning_rate = float(learning_rate)
        self.decay = float(decay)
        refs = None if decayed is None else {v.ref() for v in decayed}
        # Per variable, in the order of ``variables`` (the order `apply` receives them in).
        self.decay_mask = tuple(refs is None or v.ref() in refs for v in variables)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")

    def _with_decay(self, grads: list[tf.Tensor], variables: list[tf.Variable]) -> list[tf.Tensor]:
        if self.decay == 0.0:
            return list(grads)
        return [
            g + self.decay * v if decayed else g
            for g, v, decayed in zip(grads, variables, self.decay_mask, strict=True)
        ]

    def apply(self, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        """One descent step on the loss whose gradients are ``grads`` (same order as ``variables``)."""
        raise NotImplementedError

    def apply_if_finite(
        self,
        grads: list[tf.Tensor],
        variables: list[tf.Variable],
        loss: tf.Tensor,
        then: Callable[[], None] | None = None,
    ) -> tf.Tensor:
        """`apply` only when ``loss`` and ``grads`` are finite; returns whether it did (bool tensor).

        Checked before the update so a NaN/Inf never reaches the weights or the slots: the caller
        can stop with the state of the last good step. ``then`` (graph code: step counters, metric
        sums) runs only with the update.
        """

        def update() -> tf.Tensor:
            self.apply(grads, variables)
            if then is not None:
                then()
            return tf.constant(True)

        return tf.cond(all_finite(loss, grads), update, lambda: tf.constant(False))


class Adam(Optimizer):
    """Kingma & Ba (2014) with bias correction (the default preset's optimiser)."""

    def __init__(
        self,
        variables: list[tf.Variable],
        learning_rate: float = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        decay: float = 0.0,
        decayed: Sequence[tf.Variable] | None = None,
    ):
        super().__init__(variables, learning_rate, name="adam", decay=decay, decayed=decayed)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name="m") for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name="v") for v in variables]

    def apply(self, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        t = tf.cast(self.iterations.assign_add(1), tf.float32)
        b1_power, b2_power = tf.pow(self.beta_1, t), tf.pow(self.beta_2, t)
        for g, var, m, v in zip(
            self._with_decay(grads, variables), variables, self.m, self.v, strict=True
        ):
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=b1_power,
                beta2_power=b2_power,
                lr=tf.constant(self.learning_rate),
                beta1=tf.constant(self.beta_1),
                beta2=tf.constant(self.beta_2),
                epsilon=tf.constant(self.epsilon),
                grad=g,
            )


class Adagrad(Optimizer):
    """Duchi et al. (2011), the paper's optimiser: per-parameter step size lr / sqrt(sum of g^2).

    ``initial_accumulator`` defaults to 0 so the update is invariant to the scale of the objective
    (bar ``epsilon``): optimising the per-datapoint bound takes the same steps as optimising the
    paper's N/M-scaled minibatch estimator. (Keras' default of 0.1 would damp the first steps.)
    """

    def __init__(
        self,
        variables: list[tf.Variable],
        learning_rate: float = 0.02,
        initial_accumulator: float = 0.0,
        epsilon: float = 1e-8,
        decay: float = 0.0,
        decayed: Sequence[tf.Variable] | None = None,
    ):
        super().__init__(variables, learning_rate, name="adagrad", decay=decay, decayed=decayed)
        self.epsilon = epsilon
        self.acc = [
            tf.Variable(tf.fill(v.shape, float(initial_accumulator)), trainable=False, name="acc")
            for v in variables
        ]

    def apply(self, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        self.iterations.assign_add(1)
        for g, var, acc in zip(
            self._with_decay(grads, variables), variables, self.acc, strict=True
        ):
            tf.raw_ops.ResourceApplyAdagradV2(
                var=var.handle,
                accum=acc.handle,
                lr=tf.constant(self.learning_rate),
                epsilon=tf.constant(self.epsilon),
                grad=g,
            )


def make_optimizer(
    name: str,
    variables: list[tf.Variable],
    learning_rate: float,
    decay: float = 0.0,
    decayed: Sequence[tf.Variable] | None = None,
) -> Optimizer:
    """ "adam" or "adagrad" over ``variables``; ``decay`` adds decay * theta to each gradient."""
    if name == "adam":
        return Adam(variables, learning_rate, decay=decay, decayed=decayed)
    if name == "adagrad":
        return Adagrad(variables, learning_rate, decay=decay, decayed=decayed)
    raise ConfigError(f"train.optimizer={name!r} is not allowed; choose 'adam' or 'adagrad'")


def for_training(
    config: TrainConfig,
    variables: list[tf.Variable],
    num_train: int,
    decayed: Sequence[tf.Variable] | None = None,
) -> Optimizer:
    """The optimiser of ``config`` over ``variables`` with the prior's decay weight_decay / N.

    Every trainer builds its optimisers here, so the prior on the parameters has one spelling.
    ``decayed``: the variables that carry the prior (default: all of ``variables``).
    """
    decay = config.weight_decay / num_train
    return make_optimizer(config.optimizer, variables, config.learning_rate, decay, decayed)


__all__ = ["Optimizer", "Adam", "Adagrad", "all_finite", "for_training", "make_optimizer"]
