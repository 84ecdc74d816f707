"""The paper's marginal-likelihood estimator (Kingma & Welling 2013, Appendix D), for small latents.

    1. sample {z_l} from p(z|x) ∝ p(z) p(x|z) with HMC (gradient of log p(z) + log p(x|z));
    2. fit a density q(z) to them (here a full-covariance Gaussian per data point);
    3. sample L new z_l ~ p(z|x) and use the identity 1/p(x) = E_{p(z|x)}[q(z) / p(x, z)]:

    p(x) ~= [ 1/L sum_l q(z_l) / (p(z_l) p(x|z_l)) ]^-1

It is a harmonic-mean-type estimator: unbiased for 1/p(x), not for p(x) or log p(x), and its
variance is finite only if q has lighter tails than the posterior; with imperfect MCMC it can be
biased either way. The paper uses it only for low-dimensional latent spaces (Fig. 3, three latent
variables), and so do we: latent_dim <= MAX_LATENT_DIM. Prefer IS (K = 5000) or AIS elsewhere.
Chains are [num_chains, batch, latent_dim]; HMC moves and step adaptation come from `models.ais`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import tensorflow as tf
import tensorflow_probability as tfp

from models.ais import adapt_step_size, evaluate_points, hmc_transition, log_joint_parts
from models.errors import ConfigError
from models.metrics import PointEstimates

tfd = tfp.distributions

MAX_LATENT_DIM = 5


class HMCEstimate(NamedTuple):
    log_marginal: tf.Tensor  # [B] -log mean_l q(z_l) / p(x, z_l)
    log_terms: tf.Tensor  # [L, B] log q(z_l) - log p(x, z_l) on the held-out posterior samples
    acceptance_rate: tf.Tensor  # [B] mean acceptance probability after burn-in
    step_size: tf.Tensor  # [B] leapfrog step size after burn-in adaptation
    density: tfd.Distribution  # the fitted q(z), batch shape [B]

    @property
    def stderr(self) -> tf.Tensor:
        """Delta-method standard error of the estimate, [B]; ignores autocorrelation (optimistic)."""
        r = tf.exp(self.log_terms - tf.reduce_max(self.log_terms, axis=0))
        n = tf.cast(tf.shape(r)[0], r.dtype)
        return tf.math.reduce_std(r, axis=0) / (tf.reduce_mean(r, axis=0) * tf.sqrt(n))


def sample_posterior(
    model,
    x: tf.Tensor,
    seed: tf.Tensor,
    num_chains: int,
    num_burnin: int,
    num_results: int,
    num_leapfrog_steps: int = 10,
    step_size: float = 0.1,
    target_accept: float = 0.8,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """HMC draws from p(z|x) for x [B, D]: (samples [num_results, C, B, k], acceptance [B], step size [B]).

    Chains start at q(z|x) samples when the model has a recognition model, else at the prior; the
    step size is adapted per data point during burn-in only, so the kept draws are a valid chain.
    """
    return _sample_loop_compiled(
        model,
        tf.convert_to_tensor(x, model.prior().dtype),
        tf.convert_to_tensor(seed),
        num_chains,
        num_burnin,
        num_results,
        num_leapfrog_steps,
        step_size,
        target_accept,
    )


def _sample_loop(
    model,
    x,
    seed,
    num_chains,
    num_burnin,
    num_results,
    num_leapfrog_steps,
    step_size,
    target_accept,
):
    log_prior, log_lik = log_joint_parts(model, x)
    batch = tf.shape(x)[0]
    init_seed = tf.random.experimental.stateless_fold_in(seed, -1)
    if hasattr(model, "posterior"):
        z = model.posterior(x).sample(num_chains, seed=init_seed)  # [C, B, k]
    else:
        z = model.prior().sample([num_chains, batch], seed=init_seed)
    dtype = z.dtype

    def target(u):
        return log_prior(u) + log_lik(u)

    def burn(t, z, eps):
        z, accept = hmc_transition(
            target, z, eps, num_leapfrog_steps, tf.random.experimental.stateless_fold_in(seed, t)
        )
        return t + 1, z, adapt_step_size(eps, accept, target_accept)

    eps0 = tf.fill([1, batch, 1], tf.constant(step_size, dtype))
    _, z, eps = tf.while_loop(lambda t, *_: t < num_burnin, burn, (tf.constant(0), z, eps0))

    def draw(t, z, draws, accept_sum):
        z, accept = hmc_transition(
            target,
            z,
            eps,
            num_leapfrog_steps,
            tf.random.experimental.stateless_fold_in(seed, num_burnin + t),
        )
        return t + 1, z, draws.write(t, z), accept_sum + tf.reduce_mean(accept, axis=0)

    draws = tf.TensorArray(dtype, size=num_results)
    _, _, draws, accept_sum = tf.while_loop(
        lambda t, *_: t < num_results, draw, (tf.constant(0), z, draws, tf.zeros([batch], dtype))
    )
    return draws.stack(), accept_sum / float(num_results), eps[0, :, 0]


_sample_loop_compiled = tf.function(_sample_loop, reduce_retracing=True, autograph=False)


def fit_gaussian(samples: tf.Tensor, ridge: float = 1e-6) -> tfd.Distribution:
    """Full-covariance Gaussian per data point fitted to samples [N, B, k] (MLE + ridge * I)."""
    mean = tf.reduce_mean(samples, axis=0)  # [B, k]
    centred = samples - mean
    n = tf.cast(tf.shape(samples)[0], samples.dtype)
    cov = tf.einsum("nbi,nbj->bij", centred, centred) / n
    cov += ridge * tf.eye(tf.shape(mean)[-1], dtype=samples.dtype)
    return tfd.MultivariateNormalTriL(loc=mean, scale_tril=tf.linalg.cholesky(cov))


def reciprocal_log_marginal(
    model, x: tf.Tensor, z: tf.Tensor, density: tfd.Distribution
) -> tuple[tf.Tensor, tf.Tensor]:
    """-log mean_l q(z_l) / p(x, z_l) for posterior draws z [L, B, k]: (estimate [B], log terms [L, B])."""
    log_prior, log_lik = log_joint_parts(model, x)
    log_terms = density.log_prob(z) - log_prior(z) - log_lik(z)
    num = tf.cast(tf.shape(z)[0], z.dtype)
    return -(tf.reduce_logsumexp(log_terms, axis=0) - tf.math.log(num)), log_terms


def hmc_log_marginal(
    model,
    x: tf.Tensor,
    seed: tf.Tensor,
    num_chains: int = 10,
    num_burnin: int = 500,
    num_samples: int = 1000,
    num_leapfrog_steps: int = 10,
    step_size: float = 0.1,
    target_accept: float = 0.8,
) -> HMCEstimate:
    """Appendix D estimate of log p(x) for each row of x [B, D]; seed: [2] int tensor.

    Runs ``num_chains`` chains for ``num_burnin`` adapted steps, then 2 * ceil(num_samples / C)
    steps: the first half fits q(z), the second half (>= num_samples draws) enters the estimate.
    """
    latent_dim = int(model.prior().event_shape[-1])
    if latent_dim > MAX_LATENT_DIM:
        raise ConfigError(
            f"the Appendix D (hmc) estimator needs latent_dim <= {MAX_LATENT_DIM}, the model has "
            f"{latent_dim}; use method 'is' (K=5000) or 'ais' instead"
        )
    if min(num_chains, num_samples, num_leapfrog_steps) < 1 or num_burnin < 0:
        raise ConfigError(
            "hmc estimator: num_chains, num_samples, num_leapfrog_steps must be >= 1 and "
            f"num_burnin >= 0; got {num_chains}, {num_samples}, {num_leapfrog_steps}, {num_burnin}"
        )
    per_chain = math.ceil(num_samples / num_chains)
    draws, accept, eps = sample_posterior(
        model,
        x,
        seed,
        num_chains,
        num_burnin,
        2 * per_chain,
        num_leapfrog_steps,
        step_size,
        target_accept,
    )
    k = tf.shape(draws)[-1]
    fit_draws = tf.reshape(draws[:per_chain], [-1, tf.shape(draws)[2], k])  # [R*C, B, k]
    eval_draws = tf.reshape(draws[per_chain:], [-1, tf.shape(draws)[2], k])
    density = fit_gaussian(fit_draws)
    estimate, log_terms = reciprocal_log_marginal(
        model, tf.convert_to_tensor(x, draws.dtype), eval_draws, density
    )
    return HMCEstimate(estimate, log_terms, accept, eps, density)


def hmc_evaluate(
    model,
    batches: Iterable,
    seed: tf.Tensor,
    progress: Callable[[int], None] | None = None,
    **options,
) -> PointEstimates:
    """The App. D estimate for every row of ``batches``; ``options`` go to `hmc_log_marginal`."""

    def estimate(x: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        result = hmc_log_marginal(model, x, s, **options)
        return result.log_marginal, result.stderr

    return evaluate_points(
        estimate, "hmc", batches, tf.convert_to_tensor(seed), model.prior().dtype, progress
    )


__all__ = [
    "hmc_evaluate",
    "HMCEstimate",
    "MAX_LATENT_DIM",
    "fit_gaussian",
    "hmc_log_marginal",
    "reciprocal_log_marginal",
    "sample_posterior",
]
