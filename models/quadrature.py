"""Exact log p(x) for tiny latent spaces, by quadrature: ground truth for tests and baselines.

    log p(x) = log sum_g p(x|z_g) p(z_g) dz     over a regular grid z_g on [-radius, radius]^k

exact up to grid error for k = 1 or 2 latent dimensions; the same weights give the exact
posterior's mean and standard deviation.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from models.errors import ConfigError


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


__all__ = ["grid_log_marginal"]
