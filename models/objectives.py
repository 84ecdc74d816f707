"""The SGVB estimators of the variational lower bound, all derived from one log-weight function.

For z_l ~ q(z|x) drawn with the reparameterisation z = mu + sigma * eps, eps ~ N(0, I):

    log w_l        = log p(x|z_l) + log p(z_l) - log q(z_l|x)          (`log_weights`)
    estimator A    = 1/L sum_l log w_l                                  (Monte-Carlo KL, eq. 6)
    estimator B    = -KL(q(z|x) || p(z)) + 1/L sum_l log p(x|z_l)       (analytic KL, eq. 7)
    IW bound (k)   = log 1/k sum_l w_l                                  (Burda et al., 2015)

All estimators are per datapoint, shape [batch]. The paper's minibatch estimator of the full-data
bound is N/M times the sum over the minibatch, i.e. N times the per-datapoint mean returned here.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
import tensorflow_probability as tfp

from models.vae import VAE

tfd = tfp.distributions


class LogWeights(NamedTuple):
    """Terms of log w for S samples: each [num_samples, batch]."""

    log_likelihood: tf.Tensor
    log_prior: tf.Tensor
    log_posterior: tf.Tensor

    @property
    def log_w(self) -> tf.Tensor:
        return self.log_likelihood + self.log_prior - self.log_posterior


class Bound(NamedTuple):
    """A per-datapoint lower bound and its parts, each [batch]."""

    elbo: tf.Tensor
    reconstruction: tf.Tensor
    kl: tf.Tensor


def log_weights(model: VAE, x: tf.Tensor, num_samples: int, seed: tf.Tensor,
                posterior: tfd.Distribution | None = None) -> tuple[LogWeights, tfd.Distribution]:
    """Draw ``num_samples`` reparameterised z ~ q(z|x) and return the log-weight terms.

    x: [batch, D] float32. seed: int32/int64 tensor of shape [2] (stateless sampling).
    Returns (LogWeights with [num_samples, batch] tensors, the posterior q(z|x)).
    """
    q = model.posterior(x) if posterior is None else posterior
    z = q.sample(num_samples, seed=seed)  # [S, B, k]
    return LogWeights(model.likelihood(z).log_prob(x), model.prior().log_prob(z), q.log_prob(z)), q


def elbo(model: VAE, x: tf.Tensor, seed: tf.Tensor, estimator: str = "B", num_samples: int = 1) -> Bound:
    """Per-datapoint SGVB estimate of the lower bound with estimator "A", "B" or "iwae"."""
    lw, q = log_weights(model, x, num_samples, seed)
    reconstruction = tf.reduce_mean(lw.log_likelihood, axis=0)
    if estimator == "B":
        kl = tfd.kl_divergence(q, model.prior())
        return Bound(reconstruction - kl, reconstruction, kl)
    mc_kl = tf.reduce_mean(lw.log_posterior - lw.log_prior, axis=0)
    if estimator == "A":
        return Bound(tf.reduce_mean(lw.log_w, axis=0), reconstruction, mc_kl)
    if estimator == "iwae":
        bound = tf.reduce_logsumexp(lw.log_w, axis=0) - tf.math.log(tf.cast(num_samples, tf.float32))
        return Bound(bound, reconstruction, mc_kl)
    raise ValueError(f"estimator must be 'A', 'B' or 'iwae', got {estimator!r}")
