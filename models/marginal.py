"""Importance-sampled estimates of the marginal likelihood log p(x).

    log p(x) ~= log 1/K sum_k p(x|z_k) p(z_k) / q(z_k|x),    z_k ~ q(z|x)

This is a *stochastic lower bound*: by Jensen its expectation is <= log p(x), and it rises towards
log p(x) as K grows (Burda et al., 2015). It is exact, with zero variance, when q is the true
posterior. The K samples are drawn in chunks and combined with a streaming log-sum-exp, so memory is
O(batch * chunk) for any K.
"""

from __future__ import annotations

import math

import tensorflow as tf

from models.objectives import log_weights
from models.vae import VAE


def importance_sampled_log_marginal(model: VAE, x: tf.Tensor, num_samples: int, seed: tf.Tensor,
                                    chunk_size: int = 500) -> tf.Tensor:
    """Per-datapoint IS estimate of log p(x), shape [batch]. x: [batch, D]; seed: [2] int tensor."""
    q = model.posterior(x)
    running = tf.fill([tf.shape(x)[0]], -math.inf)  # log sum_k w_k over samples seen so far
    done, chunk_index = 0, 0
    while done < num_samples:
        n = min(chunk_size, num_samples - done)
        chunk_seed = tf.random.experimental.stateless_fold_in(seed, chunk_index)
        lw, _ = log_weights(model, x, n, chunk_seed, posterior=q)
        running = tf.reduce_logsumexp(tf.stack([running, tf.reduce_logsumexp(lw.log_w, axis=0)]), axis=0)
        done += n
        chunk_index += 1
    return running - math.log(num_samples)
