"""Plain-TF optimisers (Adagrad as in the paper; Adam) whose slots are checkpointable tf.Variables.

    Adagrad (Duchi et al., 2011):  G += g^2;               theta -= lr * g / (sqrt(G) + eps)
    Adam (Kingma & Ba, 2014):      m, v moving averages;   theta -= lr_t * m / (sqrt(v) + eps),
                                   lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)

With ``decay = c`` every gradient of the *loss* gets c * theta added: the gradient of
-log p(theta) * c / w for the Gaussian prior of `models.objectives.log_prior_theta`. Training passes
c = weight_decay / N, which makes the per-datapoint loss the paper's approximate MAP objective.

Written out rather than taken from Keras so the compiled step, the checkpoint and the SavedModel
all see ordinary `tf.Variable`s, with no Keras-2/Keras-3 split in between. The updates use TF's
fused kernels (`ResourceApplyAdagradV2`, `ResourceApplyAdam`), which also compile under XLA.
Slot variables and the step counter ``iterations`` are checkpointed, so a resumed run continues
with exactly the optimiser state it stopped with.
"""

from __future__ import annotations

import tensorflow as tf

from models.errors import ConfigError


class Optimizer(tf.Module):
    """Base: holds the learning rate, the L2 ``decay`` and the int64 step counter ``iterations``."""

    def __init__(
        self, variables: list[tf.Variable], learning_rate: float, name: str, decay: float = 0.0
    ):
        super().__init__(name=name)
        self.learning_rate = float(learning_rate)
        self.decay = float(decay)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")

    def _with_decay(self, grads: list[tf.Tensor], variables: list[tf.Variable]) -> list[tf.Tensor]:
        if self.decay == 0.0:
            return list(grads)
        return [g + self.decay * v for g, v in zip(grads, variables, strict=True)]

    def apply(self, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        """One descent step on the loss whose gradients are ``grads`` (same order as ``variables``)."""
        raise NotImplementedError


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
    ):
        super().__init__(variables, learning_rate, name="adam", decay=decay)
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
    ):
        super().__init__(variables, learning_rate, name="adagrad", decay=decay)
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
    name: str, variables: list[tf.Variable], learning_rate: float, decay: float = 0.0
) -> Optimizer:
    """ "adam" or "adagrad" over ``variables``; ``decay`` adds decay * theta to each gradient."""
    if name == "adam":
        return Adam(variables, learning_rate, decay=decay)
    if name == "adagrad":
        return Adagrad(variables, learning_rate, decay=decay)
    raise ConfigError(f"train.optimizer={name!r} is not allowed; choose 'adam' or 'adagrad'")


__all__ = ["Optimizer", "Adam", "Adagrad", "make_optimizer"]
