"""Plain-TF optimisers (Adam; Adagrad as in the paper) whose slots are checkpointable tf.Variables.

Written out rather than taken from Keras so the compiled step, the checkpoint and the SavedModel
all see ordinary `tf.Variable`s, with no Keras-2/Keras-3 split in between.
"""

from __future__ import annotations

import tensorflow as tf


class Optimizer(tf.Module):
    def __init__(self, variables: list[tf.Variable], learning_rate: float, name: str):
        super().__init__(name=name)
        self.learning_rate = float(learning_rate)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")

    def apply(self, grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        raise NotImplementedError


class Adam(Optimizer):
    """Kingma & Ba (2014) with bias correction."""

    def __init__(self, variables, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(variables, learning_rate, name="adam")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

    def apply(self, grads, variables):
        t = tf.cast(self.iterations.assign_add(1), tf.float32)
        lr = self.learning_rate * tf.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        for g, var, m, v in zip(grads, variables, self.m, self.v):
            m.assign(self.beta_1 * m + (1.0 - self.beta_1) * g)
            v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(g))
            var.assign_sub(lr * m / (tf.sqrt(v) + self.epsilon))


class Adagrad(Optimizer):
    """Duchi et al. (2011), the paper's optimiser: per-parameter step size / sqrt(sum of g^2)."""

    def __init__(self, variables, learning_rate=0.02, initial_accumulator=0.1, epsilon=1e-7):
        super().__init__(variables, learning_rate, name="adagrad")
        self.epsilon = epsilon
        self.acc = [tf.Variable(tf.fill(v.shape, initial_accumulator), trainable=False) for v in variables]

    def apply(self, grads, variables):
        self.iterations.assign_add(1)
        for g, var, acc in zip(grads, variables, self.acc):
            acc.assign_add(tf.square(g))
            var.assign_sub(self.learning_rate * g / (tf.sqrt(acc) + self.epsilon))


def make_optimizer(name: str, variables: list[tf.Variable], learning_rate: float) -> Optimizer:
    if name == "adam":
        return Adam(variables, learning_rate)
    if name == "adagrad":
        return Adagrad(variables, learning_rate)
    raise ValueError(f"optimizer must be 'adam' or 'adagrad', got {name!r}")
