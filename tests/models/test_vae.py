"""The VAE's distributions against their closed-form densities, initialisation and numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig
from models.vae import LOG_VAR_MAX, LOG_VAR_MIN, PAPER_INIT_STD, VAE, soft_clip


def make(likelihood: str = "bernoulli", **kw) -> VAE:
    cfg = dict(feature_shape=(2, 3), latent_dim=2, hidden_sizes=(8,), likelihood=likelihood)
    cfg.update(kw)
    return VAE(ModelConfig(**cfg), seed=0)


X_FRACTIONAL = tf.constant([[0.0, 1.0, 0.25, 0.5, 0.9, 1.0], [1.0, 0.0, 0.0, 0.75, 0.1, 0.3]])
Z = tf.constant([[[0.3, -1.2], [2.0, 0.5]], [[-0.7, 0.1], [0.0, 0.0]]])  # [S=2, B=2, k=2]


def test_bernoulli_log_likelihood_is_negative_sigmoid_cross_entropy():
    model = make("bernoulli")
    logits = model.decoder(Z)
    for x in (tf.round(X_FRACTIONAL), X_FRACTIONAL):
        expected = -tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.broadcast_to(x, logits.shape), logits=logits
            ),
            axis=-1,
        )
        got = model.likelihood(Z).log_prob(x)
        assert got.shape == (2, 2)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.decode_mean(Z).numpy(), tf.sigmoid(logits).numpy(), rtol=1e-6)


def test_gaussian_likelihood_has_sigmoid_mean_and_learned_per_dimension_variance():
    model = make("gaussian")
    out = model.decoder(Z).numpy().astype(np.float64)
    assert out.shape[-1] == 2 * 6  # a mean logit and a log-variance per feature
    mean = 1 / (1 + np.exp(-out[..., :6]))
    log_var = soft_clip(tf.constant(out[..., 6:]), LOG_VAR_MIN, LOG_VAR_MAX).numpy()
    x = X_FRACTIONAL.numpy()
    expected = np.sum(
        -0.5 * (np.log(2 * math.pi) + log_var + (x - mean) ** 2 / np.exp(log_var)), axis=-1
    )
    np.testing.assert_allclose(
        model.likelihood(Z).log_prob(X_FRACTIONAL).numpy(), expected, rtol=1e-5
    )
    np.testing.assert_allclose(model.decode_mean(Z).numpy(), mean, rtol=1e-5)


def test_continuous_bernoulli_is_a_normalised_density_on_the_unit_interval():
    """log p(x) = x log l + (1-x) log(1-l) + log C(l), C(l) = 2 atanh(1 - 2l) / (1 - 2l); integral 1."""
    model = make("continuous_bernoulli")
    logits = model.decoder(Z).numpy().astype(np.float64)
    lam = 1 / (1 + np.exp(-logits))
    x = X_FRACTIONAL.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):  # C(1/2) = 2 is the removable singularity
        log_c = np.where(
            np.abs(lam - 0.5) < 1e-6,
            math.log(2),
            np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam)),
        )
    expected = np.sum(x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c, axis=-1)
    np.testing.assert_allclose(
        model.likelihood(Z).log_prob(X_FRACTIONAL).numpy(), expected, rtol=1e-4, atol=1e-5
    )
    # Normalisation, per feature: integrate the marginal density over a fine grid on [0, 1].
    base = model.likelihood(Z).distribution
    grid = np.linspace(0.0, 1.0, 4001, dtype=np.float32)
    dens = np.exp(base.log_prob(grid.reshape(-1, 1, 1, 1)).numpy().astype(np.float64))
    np.testing.assert_allclose(np.trapezoid(dens, grid, axis=0), 1.0, atol=1e-4)


def test_shapes_of_posterior_prior_and_likelihood():
    model = make("bernoulli")
    x = tf.zeros([5, 6])
    q = model.posterior(x)
    assert q.batch_shape == (5,) and q.event_shape == (2,)
    assert model.prior().event_shape == (2,)
    z = q.sample(3, seed=tf.constant([1, 2]))
    assert z.shape == (3, 5, 2)
    lik = model.likelihood(z)
    assert lik.batch_shape == (3, 5) and lik.event_shape == (6,)
    assert lik.log_prob(x).shape == (3, 5)


def test_log_variance_is_kept_finite_and_bounded_for_extreme_inputs():
    model = make("gaussian")
    x = tf.constant([[1e6, -1e6, 1e6, -1e6, 1e6, -1e6]])
    _, std = model.posterior_params(x)
    assert np.all(np.isfinite(std.numpy())) and np.all(std.numpy() > 0)
    assert np.all(std.numpy() >= math.exp(0.5 * LOG_VAR_MIN) * 0.999)
    assert np.all(std.numpy() <= math.exp(0.5 * LOG_VAR_MAX) * 1.001)
    scale = model.likelihood(tf.constant([[1e4, -1e4]])).distribution.scale.numpy()
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)


def test_paper_initialisation_is_normal_with_variance_point_zero_one_including_biases():
    model = VAE(
        ModelConfig(feature_shape=(784,), latent_dim=20, hidden_sizes=(500,), init="paper"), seed=0
    )
    first = model.encoder.layers[0]
    # std of 392,000 N(0, 0.1^2) draws is within 1% with overwhelming probability.
    assert first.w.numpy().std() == pytest.approx(PAPER_INIT_STD, rel=0.01)
    assert abs(first.w.numpy().mean()) < 0.001
    biases = np.concatenate(
        [layer.b.numpy() for layer in model.encoder.layers + model.decoder.layers]
    )
    assert biases.std() == pytest.approx(PAPER_INIT_STD, rel=0.05)


def test_glorot_initialisation_is_bounded_with_zero_biases():
    model = make("bernoulli", init="glorot")
    for layer in model.encoder.layers + model.decoder.layers:
        n_in, n_out = layer.w.shape
        assert np.abs(layer.w.numpy()).max() <= math.sqrt(6 / (n_in + n_out))
        assert not np.any(layer.b.numpy())


def test_construction_is_deterministic_in_the_seed():
    cfg = ModelConfig(feature_shape=(6,), latent_dim=2, hidden_sizes=(8,))
    a, b, c = VAE(cfg, seed=3), VAE(cfg, seed=3), VAE(cfg, seed=4)
    for va, vb in zip(a.trainable_variables, b.trainable_variables, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert not np.array_equal(a.encoder.layers[0].w.numpy(), c.encoder.layers[0].w.numpy())


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_xla_compiled_densities_match_eager(likelihood):
    """The compiled training step relies on these ops under XLA (its random draws differ from eager's)."""
    model = make(likelihood)

    def densities(x, z):
        kl = tf.reduce_sum(model.posterior(x).kl_divergence(model.prior()))
        return model.likelihood(z).log_prob(x), kl, model.decode_mean(z)

    eager = densities(X_FRACTIONAL, Z)
    compiled = tf.function(densities, jit_compile=True)(X_FRACTIONAL, Z)
    for a, b in zip(compiled, eager, strict=True):
        assert np.all(np.isfinite(a.numpy()))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
