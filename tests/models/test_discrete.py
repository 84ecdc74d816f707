"""Discrete data, honest likelihoods (models/discrete.py): dequantization, binarization, the
conversion of a density on [0, 1]^D into a probability of the stored L-level values, bits/dim,
the Gaussian decoder's std floor - all against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import norm

from models import discrete as Q
from models.config import DEFAULT_MIN_STD, ModelConfig, TrainConfig, check_binarize, to_dict
from models.errors import ConfigError
from models.marginal import evaluate_dataset
from models.vae import LOG_VAR_MIN, VAE, std_floor_fraction


class FixedGaussian:
    """A VAE-shaped model whose decoder ignores z: p(x|z) = N(mu, sigma^2) per pixel, q = p(z).

    Every importance weight is then p(x|z) = N(x; mu, sigma), so log p(x) is exact for any K."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.config = ModelConfig(feature_shape=(len(mu),), latent_dim=2, likelihood="gaussian")
        self.mu, self.sigma = tf.constant(mu, tf.float32), tf.constant(sigma, tf.float32)

    def prior(self):
        return tfd().MultivariateNormalDiag(loc=tf.zeros([2]), scale_diag=tf.ones([2]))

    def posterior(self, x):
        rows = tf.shape(x)[:-1]
        loc = tf.zeros(tf.concat([rows, [2]], 0))
        return tfd().MultivariateNormalDiag(loc=loc, scale_diag=tf.ones_like(loc))

    def likelihood(self, z):
        shape = tf.concat([tf.shape(z)[:-1], tf.shape(self.mu)], 0)
        loc, scale = tf.broadcast_to(self.mu, shape), tf.broadcast_to(self.sigma, shape)
        return tfd().Independent(tfd().Normal(loc, scale), reinterpreted_batch_ndims=1)


def tfd():
    import tensorflow_probability as tfp

    return tfp.distributions


def _levels_data(rows: int, d: int, levels: int, seed: int = 0) -> np.ndarray:
    """k / (L - 1) for random integer levels k: model inputs of L-level integer data."""
    k = np.random.default_rng(seed).integers(0, levels, (rows, d))
    return (k / (levels - 1)).astype(np.float32)


def test_data_levels_of_integer_storage():
    assert Q.data_levels("uint8", 1 / 255, (0.0, 1.0)) == 256
    assert Q.data_levels("uint8", 1 / 16, (0.0, 1.0)) == 17  # the 0..16 digits
    assert Q.data_levels("uint8", 1.0, (0.0, 1.0)) == 2  # binary data
    assert Q.data_levels("float32", 1 / 255, (0.0, 1.0)) is None  # continuous
    assert Q.data_levels("uint8", 0.3, (0.0, 1.0)) is None  # not 1/n
    assert Q.data_levels("uint8", 1 / 255, (0.0, 2.0)) is None  # not inside [0, 1]


def test_dequantized_values_lie_in_their_bin_and_are_deterministic_per_seed():
    levels = 256
    x = _levels_data(64, 50, levels)
    k = np.round(x * (levels - 1))
    y = Q.dequantize(tf.constant(x), levels, Q.noise_seed(3, 1, 0)).numpy()
    assert np.all(y >= k / levels) and np.all(y < (k + 1) / levels)
    assert np.array_equal(np.floor(y * levels), k)
    again = Q.dequantize(tf.constant(x), levels, Q.noise_seed(3, 1, 0)).numpy()
    other = Q.dequantize(tf.constant(x), levels, Q.noise_seed(3, 2, 0)).numpy()
    assert np.array_equal(y, again) and not np.array_equal(y, other)
    u = y * levels - k  # the uniform noise itself: mean 1/2, variance 1/12 within sampling error
    n = u.size
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 0.01


def test_binarization_mean_is_the_intensity_within_binomial_error_and_is_seeded():
    n, p = 40_000, 0.3
    x = tf.fill([200, n // 200], p)
    b = Q.binarize(x, Q.noise_seed(11, 5, 0)).numpy()
    assert set(np.unique(b)) == {0.0, 1.0}
    assert abs(b.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert np.array_equal(b, Q.binarize(x, Q.noise_seed(11, 5, 0)).numpy())
    assert not np.array_equal(b, Q.binarize(x, Q.noise_seed(11, 6, 0)).numpy())
    ends = Q.binarize(tf.constant([[0.0, 1.0] * 50]), Q.noise_seed(0, 0)).numpy()
    assert np.array_equal(ends, np.array([[0.0, 1.0] * 50]))  # 0 and 1 stay as they are


def test_converted_log_probability_equals_the_closed_form():
    """Gaussian decoder with known mean/std on known 8-bit data: the reported log p(x) is
    sum_d log N(y_d; mu_d, sigma_d) - D log 256 at the dequantized y, and bits/dim beside it."""
    levels, d = 256, 12
    rng = np.random.default_rng(1)
    mu, sigma = rng.uniform(0.2, 0.8, d), rng.uniform(0.05, 0.3, d)
    model = FixedGaussian(mu, sigma)
    x = _levels_data(30, d, levels, seed=2)
    transform = Q.input_transform("gaussian", "none", levels)
    assert transform.kind == "dequantize" and transform.score_kind == "log-probability:256-level"
    y = Q.transform_rows(transform, x, 0, 0)
    result = evaluate_dataset(model, [y], num_samples=4, seed=0)
    per_point = Q.convert_per_point({"log_marginal": result.log_marginal}, transform, d)
    closed = norm.logpdf(y, mu, sigma).sum(axis=1) - d * math.log(256)
    np.testing.assert_allclose(per_point["log_marginal"], closed, rtol=0, atol=2e-4)
    summary = Q.convert_summary(result.summary(), transform, d)
    np.testing.assert_allclose(summary["log_marginal_likelihood"], closed.mean(), atol=2e-4)
    assert summary["bits_per_dim"] == pytest.approx(
        -summary["log_marginal_likelihood"] / (d * math.log(2)), rel=1e-12
    )
    assert summary["elbo"] == pytest.approx(result.summary()["elbo"] - d * math.log(256))


def test_dequantized_bound_is_below_the_exact_bin_probability_and_tight_for_wide_densities():
    """Jensen: E_u[log p(y)] - D log L <= log P(bin) = sum_d log(Phi((k+1)/L) - Phi(k/L)); for a
    Gaussian both sides are closed forms, and the draws average to the left one."""
    levels, d = 256, 6
    mu, sigma = np.full(d, 0.5), np.full(d, 0.2)
    x = _levels_data(1, d, levels, seed=4)
    k = np.round(x * (levels - 1))[0]
    lo, hi = k / levels, (k + 1) / levels
    exact = np.log(norm.cdf(hi, mu, sigma) - norm.cdf(lo, mu, sigma)).sum()
    # E[(y - mu)^2] for y ~ U[lo, hi), then the expected Gaussian log density in closed form
    second = ((hi - mu) ** 3 - (lo - mu) ** 3) / (3 * (hi - lo))
    expected = (-0.5 * np.log(2 * np.pi * sigma**2) - second / (2 * sigma**2)).sum()
    t = Q.input_transform("gaussian", "none", levels)
    expected += t.offset(d)
    # sigma >> 1/L: the gap is second order in the bin width (about D * slope^2 / (24 L^2))
    assert expected <= exact and exact - expected < 1e-3
    draws = np.stack([Q.transform_rows(t, x, 0, i)[0] for i in range(400)])
    bound = norm.logpdf(draws, mu, sigma).sum(axis=1) + t.offset(d)
    assert abs(bound.mean() - expected) < 4 * bound.std() / math.sqrt(len(bound))


def test_offset_sign_and_bits_per_dim():
    assert Q.log_prob_offset(784, 256) == pytest.approx(-784 * math.log(256))
    assert Q.bits_per_dim(-784 * math.log(2.0), 784) == pytest.approx(1.0)
    # a uniform density on [0, 1]^D is log p = 0: exactly 8 bits per 8-bit pixel after conversion
    assert Q.bits_per_dim(0.0 + Q.log_prob_offset(10, 256), 10) == pytest.approx(8.0)


def test_transform_choice_and_binarize_refusal():
    assert Q.input_transform("bernoulli", "none", 256).kind == "none"
    assert Q.input_transform("continuous_bernoulli", "none", 17).offset(4) == pytest.approx(
        -4 * math.log(17)
    )
    assert Q.input_transform("gaussian", "none", None).kind == "none"  # float data: no change
    dyn = Q.input_transform("bernoulli", "dynamic", 256)
    assert (dyn.kind, dyn.offset(9), dyn.score_kind) == (
        "binarize",
        0.0,
        "log-probability:binarized",
    )
    with pytest.raises(ConfigError, match=r"train.binarize='dynamic' needs model.likelihood"):
        check_binarize("dynamic", "gaussian")
    with pytest.raises(ConfigError, match="train.binarize='sometimes' is not allowed"):
        TrainConfig(binarize="sometimes")


def test_epoch_metrics_shift_only_elbo_and_reconstruction():
    t = Q.input_transform("gaussian", "none", 256)
    out = Q.convert_epoch_metrics(
        {"train_elbo": 10.0, "train_kl": 3.0, "valid_reconstruction": 1.0, "epoch": 2.0}, t, 2
    )
    off = -2 * math.log(256)
    assert out == {
        "train_elbo": 10.0 + off,
        "train_kl": 3.0,
        "valid_reconstruction": 1.0 + off,
        "epoch": 2.0,
    }


def test_min_std_is_a_validated_setting_and_defaults_keep_dicts_stable():
    assert "min_std" not in to_dict(ModelConfig())  # config.json / fingerprints as before
    assert "binarize" not in to_dict(TrainConfig())
    assert to_dict(ModelConfig(min_std=0.01))["min_std"] == 0.01
    assert to_dict(TrainConfig(binarize="dynamic"))["binarize"] == "dynamic"
    assert VAE(ModelConfig(likelihood="gaussian")).log_var_min == LOG_VAR_MIN
    assert math.exp(LOG_VAR_MIN / 2) == pytest.approx(DEFAULT_MIN_STD, rel=1e-15)
    for bad, needle in (
        (0.0, "must be > 0"),
        (-1.0, "must be > 0"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (100.0, "must be < 54.6"),
        ("x", "must be a number"),
    ):
        with pytest.raises(ConfigError, match=needle) as info:
            ModelConfig(min_std=bad)
        assert str(info.value).startswith("model.min_std=")


def _gaussian_with_log_var_bias(bias: float, min_std: float, d: int = 8) -> VAE:
    """A Gaussian VAE (D = ``d``) whose decoder log-variance head outputs ``bias`` for every z."""
    vae = VAE(ModelConfig(feature_shape=(d,), latent_dim=2, hidden_sizes=(4,),
                          likelihood="gaussian", min_std=min_std))  # fmt: skip
    last = vae.decoder.layers[-1]
    last.w.assign(tf.zeros_like(last.w))
    last.b.assign(tf.concat([tf.zeros([d]), tf.fill([d], bias)], 0))
    return vae


def test_the_learned_std_respects_the_floor_and_the_floor_fraction_says_when_it_sits_there():
    x = tf.random.stateless_uniform([20, 8], seed=[1, 2])
    on_floor = _gaussian_with_log_var_bias(-200.0, min_std=0.01)
    std = on_floor.decoder_std(tf.zeros([3, 2])).numpy()
    assert np.all(std >= 0.01) and np.all(std < 0.0101)  # the floor is the setting
    assert std_floor_fraction(on_floor, x) == 1.0
    free = _gaussian_with_log_var_bias(math.log(0.2**2), min_std=0.01)
    assert std_floor_fraction(free, x) == 0.0
    bern = VAE(ModelConfig(feature_shape=(8,), latent_dim=2, hidden_sizes=(4,)))
    assert std_floor_fraction(bern, x) is None
