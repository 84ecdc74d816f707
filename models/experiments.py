"""The paper's experiments as pure-TF routines: learning curves, estimator variance, exact checks.

- `train_curve`: train AEVB, wake-sleep or MCEM on a data array for a budget of *training samples
  evaluated* (datapoints that entered a parameter update, the x-axis of the paper's Figs. 2-3) and
  record the average lower bound per datapoint (estimator B, q(z|x) as the posterior) on train and
  test at chosen points, plus an optional log p(x) estimator.
- `gradient_variance`: per-parameter variance of the SGVB gradient of estimator A vs B at the same
  parameters and minibatch, over independent noise draws (Sec. 2.3's claim that B's is lower).
- `grid_log_marginal`: log p(x) = log sum_g p(x|z_g) p(z_g) dz on a regular grid, exact up to
  grid error for 1-2 latent dimensions; with the posterior's mean and std. Ground truth for tests
  and the Fig. 4 models.

Arrays in, floats and dicts of lists out; no I/O, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import tensorflow as tf

from models.config import TrainConfig
from models.errors import ConfigError, TrainingDivergedError
from models.objectives import elbo
from models.optim import make_optimizer
from models.vae import VAE

Method = Literal["aevb", "wake_sleep", "mcem"]
LogMarginalFn = Callable[[VAE, np.ndarray, int], np.ndarray]  # (model, x [n, D], seed) -> [n]


class AEVBTrainer:
    """Algorithm 1: one SGVB gradient step per minibatch on all parameters (as models.training)."""

    def __init__(self, model: VAE, config: TrainConfig, num_train: int):
        self.model, self.config, self.num_train = model, config, int(num_train)
        self.variables = list(model.trainable_variables)
        self.optimizer = make_optimizer(config.optimizer, self.variables, config.learning_rate)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self._step = tf.function(self._step_impl, jit_compile=config.jit_compile)

    def _step_impl(self, x: tf.Tensor, seed: tf.Tensor):
        cfg = self.config
        with tf.GradientTape() as tape:
            bound = tf.reduce_mean(elbo(self.model, x, seed, cfg.estimator, cfg.num_samples).elbo)
            loss = -bound
            if cfg.weight_decay > 0:
                sq = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.variables])
                loss += 0.5 * cfg.weight_decay * sq / float(self.num_train)
        grads = tape.gradient(loss, self.variables)
        self.optimizer.apply(grads, self.variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return bound, tf.logical_and(finite, tf.math.is_finite(loss))

    def train_step(self, x: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        bound, finite = self._step(x, seed)
        if not bool(finite):
            raise TrainingDivergedError(
                f"AEVB diverged: NaN/Inf at step {int(self.step.numpy())}; lower train.learning_rate",
                epoch=0,
                step=int(self.step.numpy()),
            )
        self.step.assign_add(1)
        return {"elbo": bound}


# -- exact log p(x) for tiny latent spaces ------------------------------------------------------------
def _grid(latent_dim: int, points: int, radius: float) -> tuple[tf.Tensor, float]:
    if latent_dim not in (1, 2):
        raise ConfigError(f"grid_log_marginal needs latent_dim 1 or 2, got {latent_dim}")
    axis = np.linspace(-radius, radius, points, dtype=np.float32)
    mesh = np.stack(np.meshgrid(*([axis] * latent_dim), indexing="ij"), -1).reshape(-1, latent_dim)
    return tf.constant(mesh), float((axis[1] - axis[0]) ** latent_dim)


def grid_log_marginal(
    model, x: np.ndarray | tf.Tensor, points: int = 201, radius: float = 6.0
) -> dict[str, np.ndarray]:
    """log p(x) by quadrature over z for latent_dim 1 or 2; also E[z|x] and std[z|x] (exact posterior).

    model: anything with ``likelihood(z)`` and ``prior()`` (a `VAE` or a decoder view).
    x: [n, D]. Returns {"log_marginal": [n], "posterior_mean": [n, k], "posterior_std": [n, k]}.
    """
    z, cell = _grid(model.config.latent_dim, points, radius)
    x = tf.convert_to_tensor(x, tf.float32)
    lik = model.likelihood(z[:, None, :])  # batch [G, n]
    log_joint = lik.log_prob(x[None]) + model.prior().log_prob(z)[:, None]  # [G, n]
    log_norm = tf.reduce_logsumexp(log_joint, axis=0)  # [n]
    w = tf.exp(log_joint - log_norm)[:, :, None]  # [G, n, 1]
    mean = tf.reduce_sum(w * z[:, None, :], axis=0)
    var = tf.reduce_sum(w * tf.square(z[:, None, :] - mean[None]), axis=0)
    return {
        "log_marginal": (log_norm + math.log(cell)).numpy(),
        "posterior_mean": mean.numpy(),
        "posterior_std": np.sqrt(np.maximum(var.numpy(), 0.0)),
    }


__all__ = ["AEVBTrainer", "grid_log_marginal", "Method"]
