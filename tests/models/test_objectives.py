"""The SGVB estimators against closed forms: Gaussian KL, probabilistic PCA, gradients.

Every tolerance is either a float64 round-off bound or a stated number of Monte-Carlo standard
errors computed from the samples themselves; all seeds are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from models.config import ModelConfig
from models.errors import ConfigError
from models.linear_gaussian import LinearGaussian
from models.objectives import (
    bernoulli_log_prob_from_logits,
    elbo,
    log_likelihood,
    log_prior_theta,
    log_weights,
    minibatch_bound,
)
from models.vae import VAE

tfd = tfp.distributions
F64 = tf.float64
Z_SCORE = 4.5  # a correct estimator fails one such check with probability ~1e-5


def seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int32)


def ppca(seed_: int = 3) -> tuple[LinearGaussian, tf.Tensor]:
    model = LinearGaussian.random(5, 2, noise_std=0.5, seed=seed_, dtype=F64)
    return model, model.sample_data(4, seed=1)


def perturb_q(model: LinearGaussian, shift: float, scale: float) -> None:
    """q = exact posterior with its mean moved by ``shift`` and its stds multiplied by ``scale``."""
    model.set_exact_posterior()
    model.q_bias.assign(model.q_bias + shift)
    model.q_log_std.assign(model.q_log_std + math.log(scale))


# -- Gaussian KL -------------------------------------------------------------------------------------
def test_analytic_gaussian_kl_equals_formula_and_monte_carlo():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4))
    std = np.exp(rng.normal(scale=0.5, size=(3, 4)))
    q = tfd.MultivariateNormalDiag(mean, std)
    prior = tfd.MultivariateNormalDiag(tf.zeros(4, F64), tf.ones(4, F64))
    analytic = tfd.kl_divergence(q, prior).numpy()
    # Paper, Appendix B: -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    formula = -0.5 * np.sum(1 + np.log(std**2) - mean**2 - std**2, axis=-1)
    np.testing.assert_allclose(analytic, formula, rtol=1e-12)
    z = q.sample(200_000, seed=seed(7))
    terms = (q.log_prob(z) - prior.log_prob(z)).numpy()
    stderr = terms.std(0) / math.sqrt(terms.shape[0])
    assert np.all(np.abs(terms.mean(0) - formula) < Z_SCORE * stderr), (
        terms.mean(0),
        formula,
        stderr,
    )


def test_estimator_b_kl_is_the_vae_posterior_kl_formula():
    model = VAE(ModelConfig(feature_shape=(6,), latent_dim=3, hidden_sizes=(8,)), seed=1)
    x = tf.random.stateless_uniform([5, 6], seed=[1, 2])
    mean, std = (t.numpy().astype(np.float64) for t in model.posterior_params(x))
    formula = 0.5 * np.sum(mean**2 + std**2 - 1 - np.log(std**2), axis=-1)
    bound = elbo(model, x, seed(3), "B", 2)
    np.testing.assert_allclose(bound.kl.numpy(), formula, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        bound.elbo.numpy(), (bound.reconstruction - bound.kl).numpy(), rtol=1e-6
    )


# -- probabilistic PCA: exact log p(x) -----------------------------------------------------------------
def test_exact_marginal_and_posterior_of_the_linear_gaussian_model_are_consistent():
    """Bayes' rule: log p(x) = log p(x|z) + log p(z) - log p(z|x) for any z."""
    model, x = ppca()
    z = tf.random.stateless_normal([7, 4, 2], seed=[0, 1], dtype=F64)
    post = model.exact_posterior(x)
    rhs = model.likelihood(z).log_prob(x) + model.prior().log_prob(z) - post.log_prob(z)
    np.testing.assert_allclose(
        rhs.numpy(), np.broadcast_to(model.exact_log_marginal(x).numpy(), (7, 4)), atol=1e-10
    )


def test_elbo_is_below_log_marginal_and_estimators_are_unbiased_for_it():
    model, x = ppca()
    perturb_q(model, shift=0.3, scale=0.7)
    log_px = model.exact_log_marginal(x).numpy()
    analytic = model.analytic_elbo(x).numpy()
    assert np.all(analytic < log_px - 1e-3), (analytic, log_px)
    num = 20_000
    lw, q = log_weights(model, x, num, seed(11))
    a = lw.log_w.numpy()
    b = (lw.log_likelihood - tfd.kl_divergence(q, model.prior())).numpy()
    for samples in (a, b):
        stderr = samples.std(0) / math.sqrt(num)
        assert np.all(np.abs(samples.mean(0) - analytic) < Z_SCORE * stderr)
        assert np.all(samples.mean(0) < log_px)


def test_with_the_exact_posterior_the_elbo_equals_log_marginal_with_zero_variance():
    model, x = ppca()
    model.set_exact_posterior()
    log_px = model.exact_log_marginal(x).numpy()
    np.testing.assert_allclose(model.analytic_elbo(x).numpy(), log_px, atol=1e-10)
    lw, _ = log_weights(model, x, 50, seed(5))
    # Every log weight is log p(x) exactly: estimator A has zero variance, and so does the IW bound.
    np.testing.assert_allclose(lw.log_w.numpy(), np.broadcast_to(log_px, (50, 4)), atol=1e-10)
    np.testing.assert_allclose(elbo(model, x, seed(5), "A", 50).elbo.numpy(), log_px, atol=1e-10)
    np.testing.assert_allclose(elbo(model, x, seed(5), "iwae", 50).elbo.numpy(), log_px, atol=1e-10)
    # Estimator B keeps the variance of its reconstruction term but is unbiased for log p(x).
    b = elbo(model, x, seed(6), "B", 20_000)
    rec = log_weights(model, x, 20_000, seed(6))[0].log_likelihood.numpy()
    stderr = rec.std(0) / math.sqrt(20_000)
    assert np.all(np.abs(b.elbo.numpy() - log_px) < Z_SCORE * stderr)


def test_estimators_a_and_b_agree_in_expectation_and_b_has_lower_variance():
    """For a q narrower than and offset from the posterior (the usual VAE regime).

    B does not beat A everywhere: as q approaches the exact posterior A's variance goes to zero, and
    for a q much wider than the posterior A can win too; this is the case the paper's B is for.
    """
    model, x = ppca()
    perturb_q(model, shift=0.3, scale=0.7)
    num = 20_000
    lw, q = log_weights(model, x, num, seed(21))
    a = lw.log_w.numpy()
    b = (lw.log_likelihood - tfd.kl_divergence(q, model.prior())).numpy()
    diff = a - b  # same z for both: the paired difference has the tightest standard error
    assert np.all(np.abs(diff.mean(0)) < Z_SCORE * diff.std(0) / math.sqrt(num))
    assert np.all(b.var(0) < 0.8 * a.var(0)), (a.var(0), b.var(0))


def test_importance_weighted_bound_rises_with_k_and_stays_below_log_marginal():
    model, x = ppca()
    perturb_q(model, shift=0.5, scale=0.6)
    log_px = model.exact_log_marginal(x).numpy()
    # elbo("iwae") is log mean_k w_k of the same draws log_weights makes.
    lw, _ = log_weights(model, x, 10, seed(30))
    expected = tf.reduce_logsumexp(lw.log_w, axis=0) - math.log(10)
    np.testing.assert_allclose(
        elbo(model, x, seed(30), "iwae", 10).elbo.numpy(), expected.numpy(), atol=1e-12
    )
    reps, means = 400, []
    for k in (1, 10, 100):
        log_w = log_weights(model, x, reps * k, seed(31, k))[0].log_w
        bounds = (
            tf.reduce_logsumexp(tf.reshape(log_w, [reps, k, -1]), axis=1) - math.log(k)
        ).numpy()
        mean, stderr = bounds.mean(0), bounds.std(0) / math.sqrt(reps)
        assert np.all(mean < log_px + Z_SCORE * stderr)
        means.append((mean, stderr))
    elbo_exact = model.analytic_elbo(x).numpy()
    assert np.all(np.abs(means[0][0] - elbo_exact) < Z_SCORE * means[0][1])  # k = 1 is the ELBO
    for (lo, lo_err), (hi, hi_err) in zip(means[:-1], means[1:], strict=True):
        assert np.all(hi - lo > -Z_SCORE * np.hypot(lo_err, hi_err))
    assert np.all(means[2][0] - elbo_exact > Z_SCORE * means[2][1])  # k = 100: clearly tighter here


# -- gradients -----------------------------------------------------------------------------------------
def _group_gradients(model, x, estimator: str, groups: int, per_group: int) -> list[np.ndarray]:
    variables = model.trainable_variables
    out = []
    for g in range(groups):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(elbo(model, x, seed(41, g), estimator, per_group).elbo)
        out.append(np.concatenate([t.numpy().ravel() for t in tape.gradient(value, variables)]))
    return out


@pytest.mark.parametrize("estimator", ["A", "B"])
def test_reparameterised_gradient_is_unbiased_against_the_closed_form_gradient(estimator):
    model = LinearGaussian.random(3, 2, noise_std=0.7, seed=4, dtype=F64)
    x = model.sample_data(2, seed=2)
    perturb_q(model, shift=0.4, scale=0.6)
    with tf.GradientTape() as tape:
        exact_value = tf.reduce_sum(model.analytic_elbo(x))
    exact = np.concatenate(
        [g.numpy().ravel() for g in tape.gradient(exact_value, model.trainable_variables)]
    )
    grads = np.stack(_group_gradients(model, x, estimator, groups=40, per_group=250))
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(len(grads))
    assert np.all(np.abs(mean - exact) < Z_SCORE * stderr + 1e-9), np.abs(mean - exact) / stderr
    assert np.linalg.norm(exact) > 1.0  # the comparison is not between two near-zero vectors


def test_reparameterised_gradient_matches_hand_derived_one_dimensional_gradient():
    """D = k = 1: ELBO(m, s) = -log(2 pi v)/2 - ((x - w m - b)^2 + w^2 s^2) / (2v) - KL, KL closed form.

    dELBO/dm = w (x - w m - b) / v - m;  dELBO/ds = -w^2 s / v - s + 1/s.
    """
    w, b, v, x, m, s = 1.5, 0.2, 0.49, 1.3, 0.1, 0.4
    model = LinearGaussian(np.array([[w]]), np.array([b]), math.sqrt(v), dtype=F64)
    model.q_bias.assign([m])
    model.q_log_std.assign([math.log(s)])
    xs = tf.constant([[x]], F64)
    grads_m, grads_s = [], []
    for g in range(40):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(elbo(model, xs, seed(51, g), "B", 250).elbo)
        dm, dlog_s = tape.gradient(value, [model.q_bias, model.q_log_std])
        grads_m.append(dm.numpy()[0])
        grads_s.append(dlog_s.numpy()[0] / s)  # chain rule: d/ds = d/dlog s / s
    expected_m = w * (x - w * m - b) / v - m
    expected_s = -(w**2) * s / v - s + 1 / s
    for got, want in ((grads_m, expected_m), (grads_s, expected_s)):
        got = np.asarray(got)
        assert abs(got.mean() - want) < Z_SCORE * got.std() / math.sqrt(len(got)) + 1e-9, (
            got.mean(),
            want,
        )


# -- scaling, prior on theta, errors ---------------------------------------------------------------
# -- the fused Bernoulli log-likelihood ----------------------------------------------------------
def test_fused_bernoulli_log_likelihood_and_gradient_equal_the_closed_form_and_tfd():
    """sum_d x log s(l) + (1 - x) log(1 - s(l)), s = sigmoid, in float64 numpy (log s(l) =
    -log1p(exp(-l)) is exact there), against the fused function and tfd.Bernoulli, with logits
    up to +-60 and both gradients (d/dl = x - sigmoid(l), d/dx = l)."""
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.normal(0, 4, (2, 3, 6)), [[[-60, -30, 0, 0.5, 30, 60]] * 3]], 0)
    x = np.concatenate([rng.random((2, 6)), [[0, 1, 1, 0, 1, 1]]], 0)  # [3, 6], broadcast to l
    log_s = -np.logaddexp(0, -logits)  # log sigmoid(l), float64
    log_1ms = -np.logaddexp(0, logits)  # log(1 - sigmoid(l))
    want = (x * log_s + (1 - x) * log_1ms).sum(-1)
    sigmoid = 1 / (1 + np.exp(-logits))
    for dtype, tol in ((tf.float64, 1e-12), (tf.float32, 2e-6)):
        tx, tl = tf.constant(x, dtype), tf.constant(logits, dtype)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([tx, tl])
            fused = bernoulli_log_prob_from_logits(tx, tl)
            generic = tfd.Independent(tfd.Bernoulli(logits=tl, dtype=dtype), 1).log_prob(tx)
        np.testing.assert_allclose(fused, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(generic, want, rtol=tol, atol=10 * tol)
        np.testing.assert_allclose(tape.gradient(fused, tl), x - sigmoid, rtol=tol, atol=tol)
        d_x = tape.gradient(fused, tx)  # x broadcast over the leading axis of l: summed over it
        np.testing.assert_allclose(d_x, logits.sum(0), rtol=tol, atol=tol)


def test_log_likelihood_takes_the_fused_path_for_the_bernoulli_decoder_only():
    x = tf.constant(np.random.default_rng(1).random((4, 6)), tf.float32)
    z = tf.constant(np.random.default_rng(2).normal(size=(2, 4, 3)), tf.float32)
    for likelihood in ("bernoulli", "gaussian", "continuous_bernoulli"):
        cfg = ModelConfig(
            feature_shape=(6,), latent_dim=3, hidden_sizes=(5,), likelihood=likelihood
        )
        p = VAE(cfg, seed=0).likelihood(z)
        np.testing.assert_allclose(log_likelihood(p, x), p.log_prob(x), rtol=1e-5, atol=1e-5)
    bernoulli = VAE(ModelConfig(feature_shape=(6,), latent_dim=3, hidden_sizes=(5,)), seed=0)
    graph = tf.function(lambda: log_likelihood(bernoulli.likelihood(z), x)).get_concrete_function()
    ops = {op.type for op in graph.graph.get_operations()}
    assert "Softplus" not in ops and "MulNoNan" not in ops  # not tfd's generic path


def test_minibatch_bound_is_n_over_m_times_the_sum():
    per_point = tf.constant([-1.0, -2.0, -3.0, -6.0])
    assert float(minibatch_bound(per_point, num_train=1000)) == pytest.approx(1000 / 4 * -12.0)


def test_log_prior_theta_is_the_gaussian_log_density_up_to_a_constant():
    variables = [tf.Variable([[0.5, -1.0], [2.0, 0.0]]), tf.Variable([3.0])]
    w = 2.0
    with tf.GradientTape() as tape:
        ours = log_prior_theta(variables, w)
    with tf.GradientTape() as tape2:
        normal = sum(
            tf.reduce_sum(tfd.Normal(0.0, 1 / math.sqrt(w)).log_prob(v)) for v in variables
        )
    for a, b in zip(tape.gradient(ours, variables), tape2.gradient(normal, variables), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
        np.testing.assert_allclose(
            a.numpy(), -w * variables[0].numpy() if a.shape == (2, 2) else -w * 3.0
        )


def test_unknown_estimator_is_a_config_error():
    model, x = ppca()
    with pytest.raises(ConfigError, match="estimator='C'.*'A', 'B', 'iwae'"):
        elbo(model, x, seed(0), "C")
