"""The paper's Appendix D estimator, checked against a linear-Gaussian model's exact posterior and log p(x)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig
from models.errors import ConfigError
from models.hmc_estimator import (
    fit_gaussian,
    hmc_evaluate,
    hmc_log_marginal,
    reciprocal_log_marginal,
    sample_posterior,
)
from models.linear_gaussian import LinearGaussian
from models.vae import VAE

SEED = tf.constant([8, 1], tf.int32)


def lg_model(orthogonal: bool = False) -> LinearGaussian:
    return LinearGaussian.random(6, 2, seed=1, orthogonal=orthogonal, dtype=tf.float64)


def test_estimator_is_exact_when_q_is_the_posterior_and_draws_are_exact():
    # q(z) / p(x, z) = q(z) / (p(x) p(z|x)) = 1 / p(x) for every z when q = p(z|x).
    model = lg_model()
    x = model.sample_data(5, seed=2)
    posterior = model.exact_posterior(x)
    z = posterior.sample(50, seed=SEED)
    estimate, log_terms = reciprocal_log_marginal(model, x, z, posterior)
    exact = model.exact_log_marginal(x).numpy()
    np.testing.assert_allclose(estimate.numpy(), exact, atol=1e-9)
    np.testing.assert_allclose(log_terms.numpy(), np.broadcast_to(-exact, (50, 5)), atol=1e-9)


def test_fit_gaussian_is_the_sample_mean_and_covariance():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(200, 3, 2)) @ np.array([[1.0, 0.5], [0.0, 0.3]]) + 2.0
    fitted = fit_gaussian(tf.constant(samples), ridge=0.0)
    for b in range(3):
        np.testing.assert_allclose(fitted.mean().numpy()[b], samples[:, b].mean(0), rtol=1e-10)
        np.testing.assert_allclose(
            fitted.covariance().numpy()[b], np.cov(samples[:, b].T, bias=True), rtol=1e-8
        )


def test_hmc_draws_match_the_exact_posterior():
    model = lg_model()
    x = model.sample_data(3, seed=4)
    draws, accept, _ = sample_posterior(
        model, x, SEED, num_chains=8, num_burnin=200, num_results=250, num_leapfrog_steps=5
    )
    flat = draws.numpy().reshape(-1, 3, 2)  # [2000, B, k], correlated within chains
    posterior = model.exact_posterior(x)
    post_std = np.sqrt(np.diagonal(posterior.covariance().numpy(), axis1=1, axis2=2))
    np.testing.assert_allclose(flat.mean(0), posterior.mean().numpy(), atol=0.15 * post_std.max())
    np.testing.assert_allclose(flat.std(0), post_std, rtol=0.1)
    assert np.all(accept.numpy() > 0.5)


def test_appendix_d_estimate_lands_near_exact_log_marginal():
    model = lg_model()
    x = model.sample_data(4, seed=3)
    result = hmc_log_marginal(
        model, x, SEED, num_chains=8, num_burnin=200, num_samples=800, num_leapfrog_steps=5
    )
    error = result.log_marginal.numpy() - model.exact_log_marginal(x).numpy()
    # The posterior is Gaussian: the best case for a Gaussian q.
    assert np.all(np.abs(error) < 0.05), error
    assert result.log_terms.shape == (800, 4)
    assert np.all(result.stderr.numpy() < 0.05)


def test_hmc_evaluate_covers_every_row_of_every_batch():
    model = lg_model()
    x = model.sample_data(3, seed=5)
    points = hmc_evaluate(
        model,
        [x[:2], x[2:]],
        SEED,
        num_chains=4,
        num_burnin=100,
        num_samples=200,
        num_leapfrog_steps=5,
    )
    assert points.method == "hmc" and points.log_marginal.shape == (3,)
    np.testing.assert_allclose(points.log_marginal, model.exact_log_marginal(x).numpy(), atol=0.1)


def test_appendix_d_refuses_large_latent_spaces():
    model = VAE(ModelConfig(feature_shape=(4,), latent_dim=6, hidden_sizes=(8,)), seed=0)
    with pytest.raises(ConfigError, match="latent_dim <= 5"):
        hmc_log_marginal(model, tf.zeros([1, 4]), SEED)
