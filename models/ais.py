"""Annealed importance sampling (Neal, 2001) of log p(x), with HMC transitions from tfp.mcmc.

Intermediate targets on a geometric path from the prior to the unnormalised posterior:

    f_t(z) = p(z)^(1 - b_t) p(x, z)^(b_t) = p(z) p(x|z)^(b_t),    0 = b_0 < b_1 < ... < b_T = 1

    z_0 ~ p(z);  for t = 1..T:  log w += (b_t - b_{t-1}) log p(x|z_{t-1}),  z_t ~ HMC_t(z_{t-1}, .)
    log p(x) ~= log 1/C sum_c w_c                                   (C independent chains)

Each HMC_t leaves f_t invariant, so E[w] = p(x) exactly and the log of the average is, like the
importance-sampled estimate, a stochastic lower bound that tightens as T grows (Wu et al., 2017).
It uses no recognition model at all, which makes it an independent cross-check of the IS numbers.
Step sizes are adapted per data point towards a target acceptance rate (Wu et al.'s rule); this
uses information across chains and is standard practice, but strictly makes the estimate slightly
adaptive. States are [num_chains, batch, latent_dim]; everything runs in one compiled while loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from models.errors import ConfigError, DatasetError
from models.metrics import PointEstimates

tfd = tfp.distributions

Schedule = Literal["sigmoid", "linear"]


def annealing_schedule(
    num_steps: int, kind: Schedule = "sigmoid", sharpness: float = 4.0
) -> np.ndarray:
    """b_0 = 0 < ... < b_T = 1, shape [T + 1]. "sigmoid" spends more steps near both ends (Grosse et al.)."""
    if num_steps < 1:
        raise ConfigError(f"AIS num_steps={num_steps} must be >= 1")
    if kind == "linear":
        return np.linspace(0.0, 1.0, num_steps + 1)
    if kind != "sigmoid":
        raise ConfigError(f"AIS schedule={kind!r} is not allowed; choose 'sigmoid' or 'linear'")
    s = 1.0 / (1.0 + np.exp(-sharpness * np.linspace(-1.0, 1.0, num_steps + 1)))
    return (s - s[0]) / (s[-1] - s[0])


def log_joint_parts(
    model, x: tf.Tensor
) -> tuple[Callable[[tf.Tensor], tf.Tensor], Callable[[tf.Tensor], tf.Tensor]]:
    """(log p(z), log p(x|z)) as functions of z [C, B, k] -> [C, B], for x [B, D]."""
    prior = model.prior()
    return prior.log_prob, lambda z: model.likelihood(z).log_prob(x)


def hmc_transition(
    target_log_prob: Callable[[tf.Tensor], tf.Tensor],
    z: tf.Tensor,
    step_size: tf.Tensor,
    num_leapfrog_steps: int,
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One Metropolis-corrected HMC move of every chain. Returns (new z, acceptance probability [C, B])."""
    kernel = tfp.mcmc.HamiltonianMonteCarlo(
        target_log_prob, step_size=step_size, num_leapfrog_steps=num_leapfrog_steps
    )
    new_z, results = kernel.one_step(z, kernel.bootstrap_results(z), seed=seed)
    accept = tf.exp(tf.minimum(results.log_accept_ratio, 0.0))
    return new_z, tf.where(tf.math.is_finite(accept), accept, tf.zeros_like(accept))


def adapt_step_size(
    step_size: tf.Tensor, accept: tf.Tensor, target_accept: float, rate: float = 0.02
) -> tf.Tensor:
    """Per data point: x(1 + rate) if the chains' mean acceptance beats the target, else /(1 + rate).

    step_size is [1, B, 1], accept [C, B]; rate 0.02 is Wu et al.'s rule.
    """
    mean_accept = tf.reduce_mean(accept, axis=0)[tf.newaxis, :, tf.newaxis]  # [1, B, 1]
    up = tf.constant(1.0 + rate, step_size.dtype)
    return tf.clip_by_value(
        step_size * tf.where(mean_accept > target_accept, up, 1.0 / up), 1e-5, 10.0
    )


class AISResult(NamedTuple):
    log_marginal: tf.Tensor  # [B] log mean_c w_c: the AIS estimate of log p(x)
    log_weights: tf.Tensor  # [C, B] final log weight of each chain
    acceptance_rate: tf.Tensor  # [B] mean HMC acceptance probability over chains and steps
    step_size: tf.Tensor  # [B] final adapted leapfrog step size

    @property
    def stderr(self) -> tf.Tensor:
        """Delta-method standard error of log mean_c w_c over chains, [B]."""
        w = tf.exp(self.log_weights - tf.reduce_max(self.log_weights, axis=0))
        c = tf.cast(tf.shape(w)[0], w.dtype)
        return tf.math.reduce_std(w, axis=0) / (tf.reduce_mean(w, axis=0) * tf.sqrt(c))


def ais_log_marginal(
    model,
    x: tf.Tensor,
    seed: tf.Tensor,
    num_chains: int = 16,
    num_steps: int = 1000,
    num_leapfrog_steps: int = 10,
    step_size: float = 0.1,
    target_accept: float = 0.65,
    schedule: Schedule = "sigmoid",
    jit_compile: bool = False,
) -> AISResult:
    """AIS estimate of log p(x) for each row of x [B, D]. seed: [2] int tensor. Cost ~ C*T*(L+2) decoder passes."""
    if num_chains < 1 or num_leapfrog_steps < 1:
        raise ConfigError(
            f"AIS num_chains={num_chains} and num_leapfrog_steps={num_leapfrog_steps} must be >= 1"
        )
    betas = tf.constant(annealing_schedule(num_steps, schedule), model.prior().dtype)
    return _COMPILED[jit_compile](
        model,
        tf.convert_to_tensor(x, betas.dtype),
        tf.convert_to_tensor(seed),
        betas,
        num_chains,
        num_leapfrog_steps,
        step_size,
        target_accept,
    )


def _ais_loop(
    model, x, seed, betas, num_chains, num_leapfrog_steps, step_size, target_accept
) -> AISResult:
    log_prior, log_lik = log_joint_parts(model, x)
    batch = tf.shape(x)[0]
    z0 = model.prior().sample(
        [num_chains, batch], seed=tf.random.experimental.stateless_fold_in(seed, -1)
    )
    dtype = z0.dtype
    num_steps = tf.shape(betas)[0] - 1

    def body(t, z, log_w, eps, accept_sum):
        b_prev, b_t = betas[t - 1], betas[t]
        log_w = log_w + (b_t - b_prev) * log_lik(z)
        z, accept = hmc_transition(
            lambda u: log_prior(u) + b_t * log_lik(u),
            z,
            eps,
            num_leapfrog_steps,
            tf.random.experimental.stateless_fold_in(seed, t),
        )
        return (
            t + 1,
            z,
            log_w,
            adapt_step_size(eps, accept, target_accept),
            accept_sum + tf.reduce_mean(accept, 0),
        )

    init = (
        tf.constant(1),
        z0,
        tf.zeros([num_chains, batch], dtype),
        tf.fill([1, batch, 1], tf.constant(step_size, dtype)),
        tf.zeros([batch], dtype),
    )
    _, _, log_w, eps, accept_sum = tf.while_loop(lambda t, *_: t <= num_steps, body, init)
    log_marginal = tf.reduce_logsumexp(log_w, axis=0) - math.log(num_chains)
    return AISResult(log_marginal, log_w, accept_sum / tf.cast(num_steps, dtype), eps[0, :, 0])


PointEstimator = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def evaluate_points(
    estimator: PointEstimator,
    method: str,
    batches: Iterable,
    seed: tf.Tensor,
    dtype: tf.DType = tf.float32,
    progress: Callable[[int], None] | None = None,
) -> PointEstimates:
    """Run ``estimator(x, seed) -> (log p(x) [B], stderr [B])`` over batches; batch i uses fold_in(seed, i)."""
    estimates, errors, done = [], [], 0
    start = time.perf_counter()
    for i, xb in enumerate(batches):
        x = tf.cast(tf.convert_to_tensor(xb), dtype)
        if int(x.shape[0]) == 0:
            continue
        log_marginal, stderr = estimator(x, tf.random.experimental.stateless_fold_in(seed, i))
        estimates.append(np.asarray(log_marginal, np.float64))
        errors.append(np.asarray(stderr, np.float64))
        done += int(x.shape[0])
        if progress is not None:
            progress(done)
    if done == 0:
        raise DatasetError(f"{method} evaluation got no rows; check the dataset split is not empty")
    return PointEstimates(
        method, np.concatenate(estimates), np.concatenate(errors), time.perf_counter() - start
    )


def ais_evaluate(
    model,
    batches: Iterable,
    seed: tf.Tensor,
    progress: Callable[[int], None] | None = None,
    **options,
) -> PointEstimates:
    """AIS over every row of ``batches`` (keep them small: cost ~ C*T*(L+2) decoder passes per row).

    ``options`` go to `ais_log_marginal` (num_chains, num_steps, num_leapfrog_steps, ...).
    """

    def estimate(x: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        result = ais_log_marginal(model, x, s, **options)
        return result.log_marginal, result.stderr

    return evaluate_points(
        estimate, "ais", batches, tf.convert_to_tensor(seed), model.prior().dtype, progress
    )


# One compiled function per mode, reused across calls (a new model or shape retraces).
_COMPILED = {
    jit: tf.function(_ais_loop, jit_compile=jit, reduce_retracing=True, autograph=False)
    for jit in (False, True)
}

__all__ = [
    "ais_evaluate",
    "evaluate_points",
    "AISResult",
    "adapt_step_size",
    "ais_log_marginal",
    "annealing_schedule",
    "hmc_transition",
]
