"""AIS with HMC transitions, checked against exact log p(x) of a linear-Gaussian model and against IS."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.ais import ais_evaluate, ais_log_marginal, annealing_schedule
from models.config import ModelConfig
from models.errors import ConfigError
from models.linear_gaussian import LinearGaussian
from models.marginal import evaluate_dataset
from models.vae import VAE

SEED = tf.constant([4, 2], tf.int32)


@pytest.mark.parametrize("kind", ["sigmoid", "linear"])
def test_schedule_runs_from_zero_to_one_monotonically(kind):
    betas = annealing_schedule(50, kind)
    assert betas.shape == (51,)
    assert betas[0] == 0.0 and betas[-1] == pytest.approx(1.0)
    assert np.all(np.diff(betas) > 0)
    if kind == "sigmoid":  # smaller steps at both ends than in the middle
        steps = np.diff(betas)
        assert steps[0] < steps[25] and steps[-1] < steps[25]
    with pytest.raises(ConfigError, match="schedule='cosine'"):
        annealing_schedule(5, "cosine")


def test_one_step_ais_is_importance_sampling_from_the_prior():
    # With b = (0, 1) the weight is p(x|z_0) for z_0 ~ p(z): the bookkeeping uses the state
    # *before* the transition at each temperature.
    model = LinearGaussian.random(5, 2, seed=3, dtype=tf.float64)
    x = model.sample_data(3, seed=1)
    result = ais_log_marginal(model, x, SEED, num_chains=8, num_steps=1, num_leapfrog_steps=2)
    z0 = model.prior().sample([8, 3], seed=tf.random.experimental.stateless_fold_in(SEED, -1))
    np.testing.assert_allclose(
        result.log_weights.numpy(), model.likelihood(z0).log_prob(x).numpy(), rtol=1e-10
    )


def test_ais_matches_exact_log_marginal_of_linear_gaussian():
    model = LinearGaussian.random(6, 2, seed=1, dtype=tf.float64)
    x = model.sample_data(4, seed=3)
    exact = model.exact_log_marginal(x).numpy()
    result = ais_log_marginal(model, x, SEED, num_chains=32, num_steps=1000, num_leapfrog_steps=5)
    est, se = result.log_marginal.numpy(), result.stderr.numpy()
    assert np.all(se < 0.08)
    assert np.all(np.abs(est - exact) < 4 * se + 0.01), (est - exact, se)
    assert abs(np.mean(est - exact)) < 3 * np.sqrt(np.mean(se**2) / 4) + 0.01
    assert np.all((result.acceptance_rate.numpy() > 0.4) & (result.acceptance_rate.numpy() < 0.99))


def test_ais_agrees_with_importance_sampling_on_a_bernoulli_vae():
    config = ModelConfig(
        feature_shape=(10,), latent_dim=2, hidden_sizes=(16,), likelihood="bernoulli"
    )
    model = VAE(config, seed=5)
    x = tf.cast(tf.random.stateless_uniform([3, 10], seed=[1, 1]) > 0.5, tf.float32)
    is_result = evaluate_dataset(model, [x], num_samples=20000, seed=1)
    ais = ais_log_marginal(model, x, SEED, num_chains=16, num_steps=300, num_leapfrog_steps=5)
    se = np.hypot(ais.stderr.numpy(), is_result.log_marginal_stderr)
    assert np.all(np.abs(ais.log_marginal.numpy() - is_result.log_marginal) < 4 * se + 0.02)


def test_ais_evaluate_runs_batches_in_order_with_folded_seeds():
    model = LinearGaussian.random(5, 2, seed=2, dtype=tf.float64)
    x = model.sample_data(5, seed=7)
    seen = []
    options = dict(num_chains=8, num_steps=50, num_leapfrog_steps=3)
    points = ais_evaluate(model, [x[:3], x[3:]], SEED, progress=seen.append, **options)
    assert seen == [3, 5] and points.method == "ais" and points.num_points == 5
    for i, (lo, hi) in enumerate([(0, 3), (3, 5)]):
        direct = ais_log_marginal(
            model, x[lo:hi], tf.random.experimental.stateless_fold_in(SEED, i), **options
        )
        np.testing.assert_allclose(
            points.log_marginal[lo:hi], direct.log_marginal.numpy(), rtol=1e-12
        )
        np.testing.assert_allclose(points.stderr[lo:hi], direct.stderr.numpy(), rtol=1e-9)
    summary = points.summary()
    assert summary["log_marginal_likelihood"] == pytest.approx(points.log_marginal.mean())
    assert summary["log_marginal_likelihood_stderr"] == pytest.approx(
        points.log_marginal.std(ddof=1) / np.sqrt(5)
    )
