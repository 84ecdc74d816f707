"""The convolutional VAE (`model.architecture = "conv"`) on tiny images: shapes, the networks
against numpy references, the closed-form KL and log-likelihood terms, training, save/load."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from models.config import (
    ModelConfig,
    TrainConfig,
    check_architecture,
    model_config_from_dict,
    to_dict,
)
from models.errors import ConfigError
from models.objectives import elbo, sample_posterior
from models.saved import load_serving, load_vae, save_model
from models.vae import LOG_VAR_MAX, LOG_VAR_MIN, VAE, ConvTranspose2D, soft_clip

LIKELIHOODS = ["bernoulli", "gaussian", "continuous_bernoulli"]
# Odd and even sides, grey and RGB: stride-2 'SAME' convolutions round up (7 -> 4 -> 2).
SHAPES = [(7, 5), (8, 8), (6, 4, 3)]


def make(shape=(7, 5), likelihood="bernoulli", **kw) -> VAE:
    cfg = dict(
        feature_shape=shape,
        latent_dim=3,
        hidden_sizes=(6,),
        likelihood=likelihood,
        architecture="conv",
        conv_channels=(4, 5),
        activation="tanh",
    )
    cfg.update(kw)
    return VAE(ModelConfig(**cfg), seed=3)


def images(shape, n=4, seed=0) -> tf.Tensor:
    d = int(np.prod(shape))
    return tf.random.stateless_uniform([n, d], seed=[seed, 9])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_shapes_on_flat_inputs_of_any_batch_shape(shape, likelihood):
    model = make(shape, likelihood)
    d = int(np.prod(shape))
    x = images(shape, 4)
    mean, std = model.posterior_params(x)
    assert mean.shape == (4, 3) and std.shape == (4, 3)
    z = tf.random.stateless_normal([2, 4, 3], seed=[1, 1])  # [S, B, k], as the estimators use
    lik = model.likelihood(z)
    assert lik.batch_shape == (2, 4) and lik.event_shape == (d,)
    assert lik.log_prob(x).shape == (2, 4)
    assert model.decode_mean(z).shape == (2, 4, d)
    assert model.decode_mean(z[0]).shape == (4, d)
    assert model.encoder(x[None]).shape == (1, 4, 6)  # leading dims pass through


def _conv_same_stride2(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference 'SAME' stride-2 convolution by explicit sums: x [H, W, Ci], w [k, k, Ci, Co]."""
    h, wd, _ = x.shape
    k = w.shape[0]
    oh, ow = -(-h // 2), -(-wd // 2)
    pad_h, pad_w = max((oh - 1) * 2 + k - h, 0), max((ow - 1) * 2 + k - wd, 0)
    xp = np.pad(x, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[2 * i : 2 * i + k, 2 * j : 2 * j + k, :]
            out[i, j] = np.tensordot(patch, w, axes=([0, 1, 2], [0, 1, 2])) + b
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", [3, 4])
def test_encoder_equals_a_numpy_reference_reading_x_in_row_major_order(shape, kernel):
    """Flat x is read as [H, W, C] row-major, convolved, flattened and fed to the dense head."""
    model = make(shape, conv_kernel_size=kernel)
    enc = model.encoder
    x = images(shape, 2).numpy().astype(np.float64)
    h, w, c = (*shape, 1) if len(shape) == 2 else shape
    for row, got in zip(x, enc(tf.constant(x, tf.float32)).numpy(), strict=True):
        a = row.reshape(h, w, c)
        for conv in enc.convs:
            a = np.tanh(_conv_same_stride2(a, conv.w.numpy(), conv.b.numpy()))
        v = a.reshape(-1)
        for i, layer in enumerate(enc.head.layers):
            v = v @ layer.w.numpy() + layer.b.numpy()
            v = np.tanh(v) if i < len(enc.head.layers) - 1 else v
        np.testing.assert_allclose(got, v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,kernel", [((7, 5), 3), ((7, 5), 4), ((8, 6), 3), ((4, 4), 4)])
def test_transposed_convolution_is_the_adjoint_of_the_strided_convolution(size, kernel):
    """<T y, x> = <y, C x> for the linear parts: the decoder mirrors the encoder exactly."""
    layer = ConvTranspose2D(5, 2, kernel, "glorot", seed=1, name="t")
    x = tf.random.stateless_normal([3, *size, 2], seed=[4, 4])
    y = tf.random.stateless_normal([3, -(-size[0] // 2), -(-size[1] // 2), 5], seed=[5, 5])
    ty = layer(y, size) - layer.b  # linear part only
    cx = tf.nn.conv2d(x, layer.w, strides=2, padding="SAME")  # filters [k, k, 2 in, 5 out]
    lhs = tf.reduce_sum(ty * x, axis=[1, 2, 3])
    rhs = tf.reduce_sum(y * cx, axis=[1, 2, 3])
    np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), rtol=1e-4, atol=1e-4)
    assert ty.shape == (3, *size, 2)


def test_gaussian_decoder_lays_out_mean_logits_then_log_variances_in_pixel_order():
    """Output [..., 2D]: channels 0..C-1 of the last transposed conv flattened (means), then C..2C-1."""
    model = make((6, 4, 3), "gaussian")
    dec = model.decoder
    z = tf.random.stateless_normal([2, 3], seed=[2, 2])
    h = tf.reshape(tf.tanh(dec.body(z)), [2, *dec.sizes[-1], -1])
    for i, deconv in enumerate(dec.deconvs):
        h = deconv(h, dec.sizes[-2 - i])
        h = tf.tanh(h) if i < len(dec.deconvs) - 1 else h
    out = dec(z).numpy()
    d = 6 * 4 * 3
    np.testing.assert_allclose(out[:, :d], h[..., :3].numpy().reshape(2, d), rtol=1e-6)
    np.testing.assert_allclose(out[:, d:], h[..., 3:].numpy().reshape(2, d), rtol=1e-6)


def _log_likelihood(likelihood: str, out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Closed-form log p(x|z) summed over features from the decoder's raw output (float64)."""
    d = x.shape[-1]
    if likelihood == "bernoulli":
        return np.sum(x * out - np.logaddexp(0.0, out), axis=-1)
    if likelihood == "gaussian":
        mean = 1 / (1 + np.exp(-out[..., :d]))
        log_var = soft_clip(tf.constant(out[..., d:]), LOG_VAR_MIN, LOG_VAR_MAX).numpy()
        return np.sum(
            -0.5 * (np.log(2 * math.pi) + log_var + (x - mean) ** 2 / np.exp(log_var)), -1
        )
    lam = 1 / (1 + np.exp(-out))
    log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    return np.sum(x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c, axis=-1)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_estimator_b_terms_equal_the_closed_forms_for_the_conv_outputs(likelihood):
    """KL(q||p) = 1/2 sum(mu^2 + s^2 - 1 - log s^2); reconstruction = log p(x|z) at the same z."""
    model = make((7, 5), likelihood)
    x = images((7, 5), 4, seed=2)
    if likelihood == "bernoulli":
        x = tf.round(x)
    seed = tf.constant([7, 1])
    bound = elbo(model, x, seed, "B", num_samples=3)
    mu, sd = (t.numpy().astype(np.float64) for t in model.posterior_params(x))
    kl = 0.5 * np.sum(mu**2 + sd**2 - 1.0 - np.log(sd**2), axis=-1)
    np.testing.assert_allclose(bound.kl.numpy(), kl, rtol=1e-5, atol=1e-5)
    z = sample_posterior(model.posterior(x), 3, seed)  # the draws elbo made
    out = model.decoder(z).numpy().astype(np.float64)
    recon = _log_likelihood(likelihood, out, x.numpy().astype(np.float64)).mean(axis=0)
    np.testing.assert_allclose(bound.reconstruction.numpy(), recon, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(bound.elbo.numpy(), recon - kl, rtol=1e-4, atol=1e-3)


def test_log_variances_stay_finite_for_extreme_inputs():
    model = make((7, 5), "gaussian")
    _, std = model.posterior_params(tf.fill([2, 35], 1e6))
    assert np.all(np.isfinite(std.numpy())) and np.all(std.numpy() > 0)
    scale = model.likelihood(tf.fill([1, 3], 1e4)).distribution.scale.numpy()
    assert np.all(np.isfinite(scale)) and np.all(scale >= math.exp(0.5 * LOG_VAR_MIN) * 0.999)


@pytest.mark.parametrize("jit", [True, False])
def test_a_training_step_moves_every_weight_and_improves_the_bound(jit):
    from models.training import Trainer

    model = make((8, 8), "bernoulli")
    x = tf.round(images((8, 8), 16, seed=5))
    before = [v.numpy().copy() for v in model.trainable_variables]
    trainer = Trainer(model, TrainConfig(learning_rate=1e-2, jit_compile=jit), num_train=16)
    start = float(tf.reduce_mean(elbo(model, x, tf.constant([0, 0]), "B", 20).elbo))
    for _ in range(20):
        assert bool(trainer.update(x))
    end = float(tf.reduce_mean(elbo(model, x, tf.constant([0, 0]), "B", 20).elbo))
    for b, v in zip(before, model.trainable_variables, strict=True):
        assert not np.array_equal(b, v.numpy()), v.name
    assert end > start


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_save_load_is_bit_exact_through_the_serving_signatures(tmp_path, likelihood):
    model = make((6, 4, 3), likelihood)
    path = save_model(model, str(tmp_path / "m"))
    loaded = load_vae(path)
    assert loaded.config == model.config and loaded.config.architecture == "conv"
    for a, b in zip(model.trainable_variables, loaded.trainable_variables, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    serving = load_serving(path)
    x = images((6, 4, 3), 5)
    z = tf.random.stateless_normal([5, 3], seed=[8, 8])
    enc = serving.signatures["encode"](x=x)
    mean, std = tf.function(model.posterior_params)(x)
    np.testing.assert_array_equal(enc["z_mean"].numpy(), mean.numpy())
    np.testing.assert_array_equal(enc["z_std"].numpy(), std.numpy())
    dec = serving.signatures["decode"](z=z)
    assert dec["x_mean"].shape == (5, 72)
    np.testing.assert_array_equal(dec["x_mean"].numpy(), tf.function(model.decode_mean)(z).numpy())
    np.testing.assert_array_equal(tf.function(loaded.decode_mean)(z).numpy(), dec["x_mean"].numpy())


def test_config_dict_round_trips_and_an_mlp_dict_keeps_its_old_keys():
    conv = make().config
    assert model_config_from_dict(to_dict(conv)) == conv
    assert to_dict(conv)["architecture"] == "conv" and to_dict(conv)["conv_channels"] == [4, 5]
    mlp = ModelConfig(feature_shape=(8, 8), conv_channels=(9,))
    keys = {"feature_shape", "latent_dim", "hidden_sizes", "activation", "likelihood", "init"}
    assert set(to_dict(mlp)) == keys  # run keys and fingerprints of MLP runs are unchanged
    assert model_config_from_dict(to_dict(mlp)).architecture == "mlp"


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"architecture": "resnet"}, "model.architecture='resnet' is not allowed; choose one of"),
        ({"conv_channels": ()}, r"model.conv_channels=\[\] must be a non-empty list"),
        ({"conv_channels": (8, 0)}, r"model.conv_channels=\[8, 0\] must be a non-empty list"),
        ({"conv_channels": "32"}, "model.conv_channels='32' must be a list of positive integers"),
        ({"conv_kernel_size": 0}, "model.conv_kernel_size=0 must be > 0"),
        ({"conv_kernel_size": 2.5}, "model.conv_kernel_size=2.5 must be an integer"),
    ],
)
def test_bad_conv_settings_are_refused_naming_field_and_value(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields)


def test_conv_is_refused_for_vectors_and_for_full_vb():
    flat = ModelConfig(feature_shape=(64,), architecture="conv")
    with pytest.raises(
        ConfigError, match=r"needs images, but dataset toy has feature_shape \[64\]"
    ):
        check_architecture(flat, dataset="toy")
    with pytest.raises(ConfigError, match="model.architecture='conv' needs images"):
        VAE(flat)
    image = dataclasses.replace(flat, feature_shape=(8, 8))
    check_architecture(image)  # fine
    with pytest.raises(
        ConfigError, match="train.theta='full_vb' supports model.architecture='mlp'"
    ):
        check_architecture(image, theta="full_vb")
    from models.full_vb import FullVBVAE

    with pytest.raises(ConfigError, match="train.theta='full_vb'"):
        FullVBVAE(image)
