"""Restoration math against closed forms: operators, PSNR, the noise estimator, latent MAP on a
linear-Gaussian decoder, and the inpainting samplers on a model whose q(z|x) is the exact posterior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from models import degradations as Dg
from models import restoration as R
from models.errors import ConfigError

tfd = tfp.distributions


class LinearGaussian:
    """x = W z + b + s eps, z ~ N(0, I). With orthogonal columns of W the exact posterior is diagonal,
    so ``posterior_params`` returns p(z|x) exactly (optionally distorted to make q approximate)."""

    def __init__(self, w, b, s, q_shift=0.0, q_scale=1.0):
        self.w, self.b, self.s = (tf.constant(a, tf.float32) for a in (w, b, s))
        self.w_np, self.b_np, self.s_np = np.asarray(w, np.float64), np.asarray(b, np.float64), s
        self.q_shift, self.q_scale = q_shift, q_scale

    def posterior_params(self, x):
        prec = 1.0 + tf.reduce_sum(self.w**2, 0) / self.s**2  # diag of I + W^T W / s^2
        mean = tf.matmul(x - self.b, self.w) / self.s**2 / prec
        return mean + self.q_shift, self.q_scale * tf.ones_like(mean) / tf.sqrt(prec)

    def likelihood(self, z):
        return tfd.Independent(tfd.Normal(self.decode_mean(z), self.s), 1)

    def decode_mean(self, z):
        return tf.matmul(z, self.w, transpose_b=True) + self.b

    def map_z(self, y, w=None, b=None, noise=None):
        """argmax_z N(y; W z + b, noise^2 I) N(z; 0, I) for one row (any W)."""
        w = self.w_np if w is None else w
        b = self.b_np if b is None else b
        noise = self.s_np if noise is None else noise
        a = np.eye(w.shape[1]) + w.T @ w / noise**2
        return np.linalg.solve(a, w.T @ (y - b) / noise**2)


def _orthogonal_model(d=16, k=3, s=0.3, seed=0, **kw):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return LinearGaussian(q * np.array([2.0, 1.5, 1.0][:k]), rng.normal(0.5, 0.1, d), s, **kw)


# ------------------------------------------------------------------------------- operators


def test_downsample_averages_blocks_and_inverts_nearest_upsampling():
    x = np.arange(2 * 16, dtype=np.float32).reshape(2, 16)  # two 4x4 images
    y = Dg.downsample(x, (4, 4), 2).numpy()
    img = x.reshape(2, 4, 4)
    want = img.reshape(2, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(2, 4)
    np.testing.assert_allclose(y, want)
    up = Dg.upsample_nearest(y, (4, 4), 2).numpy().reshape(2, 4, 4)
    np.testing.assert_array_equal(up[:, ::2, ::2], y.reshape(2, 2, 2))
    np.testing.assert_array_equal(up[:, 1::2, 1::2], y.reshape(2, 2, 2))
    np.testing.assert_allclose(Dg.downsample(up.reshape(2, 16), (4, 4), 2), y)


def test_psnr_and_mse_closed_form():
    ref = np.zeros((3, 10), np.float32)
    x = ref + np.array([[0.1], [0.01], [0.5]], np.float32)
    np.testing.assert_allclose(Dg.mse(x, ref), [0.01, 1e-4, 0.25], rtol=1e-5)
    np.testing.assert_allclose(Dg.psnr(x, ref), [20.0, 40.0, 10 * math.log10(4)], rtol=1e-5)
    np.testing.assert_allclose(Dg.psnr(x * 16, ref, peak=16.0), Dg.psnr(x, ref), rtol=1e-5)


def test_random_and_block_masks():
    seed = tf.constant([1, 2])
    m = Dg.random_mask(400, 64, 0.5, seed).numpy()
    assert set(np.unique(m)) == {0.0, 1.0}
    assert abs(1 - m.mean() - 0.5) < 4 * math.sqrt(0.25 / m.size)
    b = Dg.block_mask(50, (8, 8), 3, seed).numpy().reshape(50, 8, 8)
    assert ((1 - b).sum(axis=(1, 2)) == 9).all()  # exactly one 3x3 hole per image
    for img in b:
        rows, cols = np.nonzero(img == 0)
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
    assert len({tuple(np.argwhere(img == 0)[0]) for img in b}) > 5  # positions vary


def test_salt_and_pepper_replaces_the_given_fraction_by_the_extremes():
    x = np.full((200, 64), 0.5, np.float32)
    y = Dg.salt_and_pepper(x, 0.2, 0.0, 1.0, tf.constant([3, 4])).numpy()
    hit = y != 0.5
    assert set(np.unique(y[hit])) == {0.0, 1.0}
    assert abs(hit.mean() - 0.2) < 4 * math.sqrt(0.16 / y.size)
    assert abs((y == 1.0).mean() - 0.1) < 4 * math.sqrt(0.09 / y.size)


def test_degrade_inpaint_zeroes_missing_entries():
    x = np.random.default_rng(0).uniform(size=(5, 16)).astype(np.float32)
    y, mask = Dg.degrade(Dg.DegradationSpec("inpaint", (4, 4), amount=0.5), x, tf.constant([0, 1]))
    np.testing.assert_array_equal(y.numpy(), x * mask.numpy())


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_noise_estimate_on_flat_images_matches_the_level(sigma):
    x = np.full((300, 64), 0.3, np.float32)
    y = Dg.add_gaussian_noise(x, sigma, tf.constant([5, 6]))
    # 300*8*7 differences: the MAD estimate's relative std is ~1.1 / sqrt(n) ~ 2.5 %
    assert float(Dg.estimate_noise_std(y, (8, 8))) == pytest.approx(sigma, rel=0.08)


def test_mean_impute_fills_missing_with_observed_feature_means():
    y = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 6.0]], np.float32)
    mask = np.array([[1, 1], [1, 0], [0, 1]], np.float32)
    np.testing.assert_allclose(Dg.mean_impute(y, mask), [[1, 2], [3, 4], [2, 6]])


def test_salt_pepper_posterior_keeps_entries_that_cannot_be_corrupted():
    spec = Dg.DegradationSpec("salt_pepper", (4,), amount=0.1)
    y = tf.constant([[0.3, 0.0, 1.0, 0.7]])
    x_hat = tf.constant([[0.9, 0.9, 0.05, 0.7]])
    out = R.salt_pepper_posterior_mean(spec, x_hat, y).numpy()[0]
    assert out[0] == pytest.approx(0.3) and out[3] == pytest.approx(0.7)
    # an extreme value far from the model's prediction is almost surely corrupted
    assert out[1] == pytest.approx(0.9, abs=1e-3) and out[2] == pytest.approx(0.05, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "blur"}, "not known"),
        ({"kind": "superres", "feature_shape": (64,)}, "image features"),
        ({"kind": "superres", "feature_shape": (9, 9)}, "divide"),
        ({"kind": "inpaint", "amount": 1.5}, "amount"),
        ({"kind": "gaussian", "noise_std": -1.0}, "noise_std"),
    ],
)
def test_spec_validation_names_the_field(kwargs, match):
    args = {"feature_shape": (8, 8), **kwargs}
    with pytest.raises(ConfigError, match=match):
        Dg.DegradationSpec(**args)


# ------------------------------------------------------------------------------- latent MAP


def _restorer(model, spec, **kw):
    return R.Restorer(model, spec, map_steps=800, learning_rate=0.05, jit_compile=False, **kw)


def test_latent_map_denoise_equals_the_linear_gaussian_closed_form():
    model = _orthogonal_model()
    rng = np.random.default_rng(1)
    y = rng.normal(0.5, 0.5, size=(4, 16)).astype(np.float32)
    spec = Dg.DegradationSpec("gaussian", (4, 4), noise_std=0.2)
    x, _ = _restorer(model, spec).restore("map", y)
    want = np.stack([model.map_z(row, noise=0.2) for row in y]) @ model.w_np.T + model.b_np
    np.testing.assert_allclose(x.numpy(), want, atol=2e-3)


def test_latent_map_superres_equals_the_closed_form_with_pooled_decoder():
    model = _orthogonal_model()
    y = np.random.default_rng(2).normal(0.5, 0.3, size=(3, 4)).astype(np.float32)
    spec = Dg.DegradationSpec("superres", (4, 4), factor=2, noise_std=0.1)
    x, _ = _restorer(model, spec).restore("map", y)
    pool = Dg.downsample(np.eye(16, dtype=np.float32), (4, 4), 2).numpy().T  # [4, 16]
    pw, pb = pool @ model.w_np, pool @ model.b_np
    z = np.stack([model.map_z(row, pw, pb, 0.1) for row in y])
    np.testing.assert_allclose(x.numpy(), z @ model.w_np.T + model.b_np, atol=2e-3)


def test_latent_map_inpaint_uses_observed_entries_only_and_keeps_them():
    model = _orthogonal_model()
    rng = np.random.default_rng(3)
    y = rng.normal(0.5, 0.5, size=(3, 16)).astype(np.float32)
    mask = (rng.uniform(size=(3, 16)) > 0.4).astype(np.float32)
    spec = Dg.DegradationSpec("inpaint", (4, 4))
    x, _ = _restorer(model, spec).restore("map", y * mask, mask)
    for row, yo, m in zip(x.numpy(), y, mask.astype(bool), strict=True):
        z = model.map_z(yo[m], model.w_np[m], model.b_np[m])
        np.testing.assert_allclose(row[m], yo[m], atol=1e-6)
        np.testing.assert_allclose(row[~m], (model.w_np @ z + model.b_np)[~m], atol=2e-3)


def test_latent_map_with_unknown_noise_level_recovers_it():
    model = _orthogonal_model(d=64, s=0.1)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(200, 3))
    clean = (z @ model.w_np.T + model.b_np).astype(np.float32)
    y = clean + rng.normal(0, 0.15, size=clean.shape).astype(np.float32)
    spec = Dg.DegradationSpec("gaussian", (8, 8))  # level unknown
    x, diag = _restorer(model, spec).restore("map", y)
    # joint MAP of sigma: sqrt(mean residual^2) with k=3 of 64 dims fitted -> sigma sqrt(61/64)
    assert diag["noise_std"] == pytest.approx(0.15 * math.sqrt(61 / 64), rel=0.05)
    assert float(tf.reduce_mean(Dg.psnr(x, clean))) > float(tf.reduce_mean(Dg.psnr(y, clean))) + 5


# ------------------------------------------------------------------------------- samplers


def _exact_conditional_mean(model, y, m):
    z = model.map_z(y[m], model.w_np[m], model.b_np[m])  # Gaussian: mean = mode
    return (model.w_np @ z + model.b_np)[~m]


def _chain_mean(model, method, rows=200, iterations=300, seed=(7, 8)):
    rng = np.random.default_rng(5)
    y = np.tile(rng.normal(0.5, 0.5, size=(1, 16)).astype(np.float32), (rows, 1))
    mask = np.tile((np.arange(16) % 3 != 0).astype(np.float32), (rows, 1))
    r = R.Restorer(model, Dg.DegradationSpec("inpaint", (4, 4)), iterations=iterations, burn_in=50)
    x, diag = r.restore(method, y * mask, mask, seed=tf.constant(seed))
    m = mask[0].astype(bool)
    return x.numpy(), y[0], m, diag


def test_pseudo_gibbs_with_exact_posterior_converges_to_the_conditional_mean():
    model = _orthogonal_model()
    x, y, m, _ = _chain_mean(model, "pseudo_gibbs")
    np.testing.assert_array_equal(x[:, m], np.tile(y[m], (len(x), 1)))  # observed kept
    np.testing.assert_allclose(x[:, ~m].mean(0), _exact_conditional_mean(model, y, m), atol=0.02)


def test_mwg_accepts_every_exact_posterior_proposal():
    _, _, _, diag = _chain_mean(_orthogonal_model(), "mwg", rows=20, iterations=100)
    assert diag["acceptance_rate"] > 0.999


def test_mwg_corrects_an_approximate_posterior_that_biases_pseudo_gibbs():
    model = _orthogonal_model(q_shift=0.2, q_scale=1.5)  # q(z|x) is wrong, but overdispersed
    x_mwg, y, m, diag = _chain_mean(model, "mwg", iterations=600)
    want = _exact_conditional_mean(_orthogonal_model(), y, m)
    x_pg, *_ = _chain_mean(model, "pseudo_gibbs")
    assert 0.05 < diag["acceptance_rate"] < 0.95
    np.testing.assert_allclose(x_mwg[:, ~m].mean(0), want, atol=0.03)
    assert np.abs(x_pg[:, ~m].mean(0) - want).max() > 0.1  # pseudo-Gibbs stays biased


def test_sampler_methods_are_rejected_for_other_degradations():
    spec = Dg.DegradationSpec("gaussian", (4, 4), noise_std=0.1)
    with pytest.raises(ConfigError, match="inpaint only"):
        R.Restorer(_orthogonal_model(), spec).restore("mwg", np.zeros((1, 16), np.float32))
