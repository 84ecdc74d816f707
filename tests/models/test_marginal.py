"""Importance-sampled log p(x) and dataset evaluation, checked against a linear-Gaussian model's closed forms.

The model (probabilistic PCA, float64) has exact log p(x), exact posterior and a closed-form ELBO.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from models import metrics
from models.config import ModelConfig
from models.errors import ConfigError, DatasetError
from models.linear_gaussian import LinearGaussian
from models.marginal import (
    DatasetEvaluator,
    chunk_sizes,
    evaluate_dataset,
    importance_sampled_log_marginal,
    philox_sampled,
)
from models.objectives import log_weights
from models.vae import VAE

SEED = tf.constant([3, 7], tf.int32)


def exact_q_model(orthogonal: bool = True) -> LinearGaussian:
    model = LinearGaussian.random(
        6, 2, noise_std=0.5, seed=1, orthogonal=orthogonal, dtype=tf.float64
    )
    model.set_exact_posterior()
    return model


def imperfect_q_model() -> LinearGaussian:
    """q's mean is shifted by ~0.5 posterior std and its std inflated by 1.3: KL(q || p(z|x)) ~ 0.4 nats."""
    model = exact_q_model()
    std = tf.exp(model.q_log_std)
    model.q_bias.assign(0.5 * std)
    model.q_log_std.assign(model.q_log_std + math.log(1.3))
    return model


def test_chunk_sizes_cover_k_exactly():
    assert chunk_sizes(5000, 500) == [500] * 10
    assert chunk_sizes(7, 3) == [3, 3, 1]
    assert chunk_sizes(2, 10) == [2]
    with pytest.raises(ConfigError, match="num_samples=0"):
        chunk_sizes(0, 10)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("orthogonal", [True, False])
def test_exact_posterior_gives_exact_log_marginal_with_zero_variance(orthogonal, jit_compile):
    model = exact_q_model(orthogonal)
    x = model.sample_data(8, seed=2)
    exact = model.exact_log_marginal(x).numpy()
    # Diagonal q equals p(z|x) only for orthogonal W; otherwise pass the full-covariance posterior.
    posterior_fn = None if orthogonal else model.exact_posterior
    evaluator = DatasetEvaluator(model, posterior_fn, jit_compile=jit_compile)
    for seed in ([0, 1], [5, 9]):
        out = evaluator.evaluate_batch(x, 64, tf.constant(seed), chunk_size=10)
        np.testing.assert_allclose(out["log_marginal"], exact, atol=1e-9)
        np.testing.assert_allclose(out["elbo_a"], exact, atol=1e-9)  # every log w equals log p(x)
        np.testing.assert_allclose(out["ess"], 64.0, rtol=1e-9)


def test_streaming_chunks_equal_one_logsumexp_over_all_samples():
    model = imperfect_q_model()
    x = model.sample_data(5, seed=4)
    out = DatasetEvaluator(model, jit_compile=False).evaluate_batch(x, 20, SEED, chunk_size=7)
    q = philox_sampled(model.posterior(x))
    parts = [
        log_weights(model, x, n, tf.random.experimental.stateless_fold_in(SEED, i), posterior=q)[0]
        for i, n in enumerate([7, 7, 6])
    ]
    log_w = tf.concat([p.log_w for p in parts], axis=0).numpy()  # [20, B]
    log_lik = tf.concat([p.log_likelihood for p in parts], axis=0).numpy()
    lse = np.logaddexp.reduce(log_w, axis=0)
    np.testing.assert_allclose(out["log_marginal"], lse - math.log(20), rtol=1e-12)
    np.testing.assert_allclose(out["elbo_a"], log_w.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["reconstruction"], log_lik.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        out["ess"], np.exp(2 * lse - np.logaddexp.reduce(2 * log_w, axis=0)), rtol=1e-9
    )
    # The eager helper others call uses the same seed scheme and gives the same numbers.
    eager = importance_sampled_log_marginal(model, x, 20, SEED, chunk_size=7).numpy()
    np.testing.assert_allclose(eager, out["log_marginal"], rtol=1e-12)


def _replicated_estimates(model, x, num_samples, replicates, seed):
    """[replicates, B] independent IS estimates (replicates stacked into the batch)."""
    x_rep = tf.tile(x, [replicates, 1])
    out = DatasetEvaluator(model, jit_compile=False).evaluate_batch(
        x_rep, num_samples, tf.constant([seed, 0]), chunk_size=max(1, 20000 // replicates)
    )
    return out["log_marginal"].reshape(replicates, -1)


def test_imperfect_q_is_a_lower_bound_that_rises_with_k_and_reaches_log_p():
    model = imperfect_q_model()
    x = model.sample_data(4, seed=5)
    exact = model.exact_log_marginal(x).numpy()
    gaps, ses = [], []
    for k, reps in [(1, 400), (4, 800), (32, 800), (5000, 40)]:
        est = _replicated_estimates(model, x, k, reps, seed=k)
        gap = exact - est.mean(axis=0)  # [B], E[estimate] <= log p(x) means gap >= 0
        se = est.std(axis=0, ddof=1) / math.sqrt(reps)
        gaps.append(gap)
        ses.append(se)
    gaps, ses = np.array(gaps), np.array(ses)
    # K = 1 is the ELBO: below log p(x) by KL(q || p(z|x)) ~ 0.4 nats, far beyond the noise.
    assert np.all(gaps[0] > 0.2) and np.all(gaps[0] > 5 * ses[0])
    # Never above log p(x) on average (up to noise), and the gap shrinks as K grows.
    assert np.all(gaps > -3 * ses)
    assert np.all(gaps[1] < gaps[0] - 3 * np.hypot(ses[0], ses[1]))
    assert np.all(gaps[2] < gaps[1] - 3 * np.hypot(ses[1], ses[2]))
    # At K = 5000 the estimate is within a few standard errors of the exact value.
    assert np.all(np.abs(gaps[3]) < 4 * ses[3] + 1e-3), (gaps[3], ses[3])


def test_evaluate_dataset_matches_closed_forms_and_keeps_order():
    model = imperfect_q_model()
    x = model.sample_data(10, seed=6)
    seen = []
    result = evaluate_dataset(
        model,
        tf.data.Dataset.from_tensor_slices(x).batch(4),
        num_samples=4000,
        seed=11,
        progress=seen.append,
    )
    assert seen == [4, 8, 10]
    exact = model.exact_log_marginal(x).numpy()
    elbo = model.analytic_elbo(x).numpy()
    assert result.log_marginal.shape == (10,)
    # Per point and in input order: within 4 delta-method standard errors of log p(x).
    assert np.all(np.abs(result.log_marginal - exact) < 4 * result.log_marginal_stderr + 1e-3)
    assert np.all(result.log_marginal_stderr < 0.03)
    # Estimators A and B with L = 4000 match the closed-form ELBO within their Monte-Carlo error.
    lw, _ = log_weights(model, x, 4000, tf.constant([0, 1]))
    mc_se_a = lw.log_w.numpy().std(0) / math.sqrt(4000)
    mc_se_b = lw.log_likelihood.numpy().std(0) / math.sqrt(4000)
    assert np.all(np.abs(result.elbo_a - elbo) < 4.5 * mc_se_a)
    assert np.all(np.abs(result.elbo_b - elbo) < 4.5 * mc_se_b)
    assert np.all(exact - elbo > 0.2)  # so the log p(x) check above is not passed by the ELBO
    assert np.all(result.elbo_a <= result.log_marginal)  # Jensen, for the same samples
    assert np.all((result.ess >= 1.0) & (result.ess <= 4000.0))
    summary = result.summary()
    assert summary["log_marginal_likelihood"] == pytest.approx(result.log_marginal.mean())
    assert summary["log_marginal_likelihood_stderr"] == pytest.approx(
        result.log_marginal.std(ddof=1) / math.sqrt(10)
    )
    assert summary["elbo"] == pytest.approx(elbo.mean(), abs=0.02)
    assert summary["kl"] - summary["reconstruction"] == pytest.approx(-summary["elbo"])
    assert "bits_per_dim" not in summary  # a Gaussian density on unquantised data has no bits/dim


def test_active_units_count_dimensions_whose_posterior_mean_varies():
    # Orthogonal columns: two strong, one nearly unused (Var_x E[z_j|x] ~ 0.0016), one unused.
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(8, 4)))
    model = LinearGaussian(
        basis * np.array([2.0, 1.5, 0.02, 0.0]), np.zeros(8), 0.5, dtype=tf.float64
    )
    model.set_exact_posterior()
    x = model.sample_data(400, seed=1)
    result = evaluate_dataset(
        model, tf.data.Dataset.from_tensor_slices(x).batch(128), num_samples=2, seed=0
    )
    # Var_x of the exact posterior mean is |w_j|^2 / (sigma^2 + |w_j|^2): 0.94, 0.9, 0.0016, 0.
    np.testing.assert_allclose(result.latent_mean_variance, [0.941, 0.9, 0.0016, 0.0], atol=0.15)
    assert result.latent_mean_variance[3] == 0.0
    assert result.active_units == 2


def test_running_moments_equal_numpy_over_uneven_batches():
    rows = np.random.default_rng(1).normal(loc=100.0, size=(101, 3))
    moments = metrics.RunningMoments()
    for chunk in np.split(rows, [1, 40, 41, 90]):
        moments.update(chunk)
    np.testing.assert_allclose(moments.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.variance, rows.var(0), rtol=1e-9)


def test_bits_per_dim_closed_forms():
    assert metrics.bits_per_dim(-10 * math.log(2.0), 10) == pytest.approx(
        1.0
    )  # 1 bit per binary dim
    assert metrics.bits_per_dim(0.0, 784, quantization_step=1 / 256) == pytest.approx(8.0)
    assert metrics.mean_and_stderr(np.array([1.0, 3.0])) == pytest.approx((2.0, 1.0))


def _tiny_bernoulli_vae():
    config = ModelConfig(
        feature_shape=(12,), latent_dim=2, hidden_sizes=(16,), likelihood="bernoulli"
    )
    return VAE(config, seed=3)


def test_bernoulli_bits_per_dim_only_for_binary_data_and_jit_matches_eager():
    model = _tiny_bernoulli_vae()
    probs = tf.random.stateless_uniform([9, 12], seed=[1, 2])
    binary = tf.cast(probs > 0.5, tf.float32)
    result = evaluate_dataset(
        model, [binary[:5], binary[5:]], num_samples=50, seed=2, jit_compile=True
    )
    expected_bpd = -result.log_marginal.mean() / (12 * math.log(2.0))
    assert result.bits_per_dim == pytest.approx(expected_bpd, rel=1e-6)
    assert np.all(result.elbo_a <= result.log_marginal + 1e-5)
    # XLA turns the same Philox bits into different (equally valid) normals, so compare at large K.
    batches = [binary[:5], binary[5:]]
    jit = evaluate_dataset(model, batches, num_samples=3000, seed=2, jit_compile=True)
    eager = evaluate_dataset(model, batches, num_samples=3000, seed=2, jit_compile=False)
    se = np.hypot(jit.log_marginal_stderr, eager.log_marginal_stderr)
    assert np.all(np.abs(jit.log_marginal - eager.log_marginal) < 4 * se + 1e-4)
    assert np.all(se < 0.15)
    grey = evaluate_dataset(model, [probs], num_samples=5, seed=2)
    assert grey.bits_per_dim is None  # Bernoulli log_prob of grey levels is not a log-probability


def test_bad_inputs_raise_clear_errors():
    model = _tiny_bernoulli_vae()
    with pytest.raises(DatasetError, match="no rows"):
        evaluate_dataset(model, [], num_samples=5)
    with pytest.raises(ConfigError, match="num_samples=0"):
        evaluate_dataset(model, [tf.zeros([2, 12])], num_samples=0)
