"""Degradations of clean inputs and the quality measures of restoration (pure TF).

A degradation maps a clean x [B, D] to an observation y with a known likelihood p(y | x):

    gaussian     y = x + sigma * eps                      log N(y; x, sigma^2)
    salt_pepper  y_d = x_d w.p. 1-p, else low/high        log[(1-p) N(y_d; x_d, s0^2) Delta
                                                               + p/2 [y_d in {low, high}]]
    inpaint      y_d = x_d where mask_d = 1 (observed)    sum_{d observed} log p_theta(x_d = y_d | z)
    superres     y = avgpool_s(x) + sigma_y * eps         log N(y; avgpool_s(x), sigma_y^2)

`DegradationSpec` names one with its parameters; `degrade` applies it with a stateless seed; PSNR,
MSE and the model-free baselines (mean imputation, nearest-neighbour upsampling) measure a
restoration. The restoration methods themselves are in models/restoration.py.

Shapes: x, mask [B, D] (D = prod(feature_shape)); y [B, D] or [B, D / s^2] for superres.
"""

from __future__ import annotations

import math

import tensorflow as tf

from models.degradation_spec import (  # noqa: F401  (re-exported: the spec is part of this API)
    MAD_TO_STD,
    MIN_MSE,
    MIN_STD,
    Degradation,
    DegradationSpec,
)
from models.errors import ConfigError

# ------------------------------------------------------------------------------- operators


def _images(x: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    """[B, D] -> [B, H, W, C] (C = 1 for [H, W] features)."""
    if len(shape) == 1:  # flat features: one row of D values
        return tf.reshape(x, [-1, 1, shape[0], 1])
    h, w, *c = shape
    return tf.reshape(x, [-1, h, w, c[0] if c else 1])


def downsample(x: tf.Tensor, feature_shape: tuple[int, ...], factor: int) -> tf.Tensor:
    """Average pooling by ``factor``: [B, H*W*C] -> [B, (H/s)*(W/s)*C]."""
    pooled = tf.nn.avg_pool2d(_images(x, feature_shape), factor, factor, "VALID")
    return tf.reshape(pooled, [tf.shape(x)[0], -1])


def upsample_nearest(y: tf.Tensor, feature_shape: tuple[int, ...], factor: int) -> tf.Tensor:
    """Nearest-neighbour upsampling (each value repeated s x s): the inverse shape of downsample."""
    h, w, *c = feature_shape
    img = _images(y, (h // factor, w // factor, *c))
    img = tf.repeat(tf.repeat(img, factor, axis=1), factor, axis=2)
    return tf.reshape(img, [tf.shape(y)[0], -1])


def add_gaussian_noise(x: tf.Tensor, std: float, seed: tf.Tensor) -> tf.Tensor:
    return x + std * tf.random.stateless_normal(tf.shape(x), seed=seed, dtype=x.dtype)


def salt_and_pepper(
    x: tf.Tensor, amount: float, low: float, high: float, seed: tf.Tensor
) -> tf.Tensor:
    """Each entry is replaced w.p. ``amount`` by ``low`` or ``high`` (equally likely)."""
    u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=x.dtype)
    hit = u < amount
    salt = u < amount / 2.0
    return tf.where(hit, tf.where(salt, tf.cast(high, x.dtype), tf.cast(low, x.dtype)), x)


def random_mask(batch: int, dim: int, missing: float, seed: tf.Tensor) -> tf.Tensor:
    """float32 [B, D]: 1 = observed, 0 = missing, each entry missing w.p. ``missing``."""
    u = tf.random.stateless_uniform([batch, dim], seed=seed)
    return tf.cast(u >= missing, tf.float32)


def block_mask(
    batch: int, feature_shape: tuple[int, ...], block: int, seed: tf.Tensor
) -> tf.Tensor:
    """float32 [B, D]: one block x block square (all channels) missing per image, uniform position."""
    h, w, *c = feature_shape
    tops = tf.random.stateless_uniform(
        [batch, 1, 1], seed=seed, maxval=h - block + 1, dtype=tf.int32
    )
    lefts = tf.random.stateless_uniform(
        [batch, 1, 1], seed=seed + [0, 1], maxval=w - block + 1, dtype=tf.int32
    )
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    inside = (rows >= tops) & (rows < tops + block) & (cols >= lefts) & (cols < lefts + block)
    mask = tf.cast(~inside, tf.float32)[..., None]
    mask = tf.repeat(mask, c[0] if c else 1, axis=-1)
    return tf.reshape(mask, [batch, -1])


def degrade(
    spec: DegradationSpec, x: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """(y, mask) for clean x [B, D]; mask is None except for inpaint (then y = x * mask)."""
    x = tf.convert_to_tensor(x, tf.float32)
    if spec.kind == "gaussian":
        if spec.noise_std is None:
            raise ConfigError("degrade(gaussian) needs noise_std (the level of the added noise)")
        return add_gaussian_noise(x, spec.noise_std, seed), None
    if spec.kind == "salt_pepper":
        return salt_and_pepper(x, spec.amount, spec.low, spec.high, seed), None
    if spec.kind == "superres":
        return downsample(x, spec.feature_shape, spec.factor), None
    batch = tf.shape(x)[0]
    if spec.block:
        mask = block_mask(batch, spec.feature_shape, spec.block, seed)
    else:
        mask = random_mask(batch, spec.input_dim, spec.amount, seed)
    return x * mask, mask


def estimate_noise_std(y: tf.Tensor, feature_shape: tuple[int, ...]) -> tf.Tensor:
    """sigma of additive Gaussian noise from horizontal neighbour differences, pooled over the batch.

    y_{i,j} - y_{i,j+1} has std sigma * sqrt(2) where the clean image is flat, so
    sigma_hat = median|diff| / (0.6745 sqrt(2)); edges are outliers the median mostly ignores
    (on images with many edges the estimate is biased upwards).
    """
    img = _images(tf.convert_to_tensor(y, tf.float32), feature_shape)
    diff = tf.reshape(img[:, :, 1:, :] - img[:, :, :-1, :], [-1])
    abs_diff = tf.sort(tf.abs(diff))
    n = tf.size(abs_diff)
    median = 0.5 * (abs_diff[(n - 1) // 2] + abs_diff[n // 2])
    return median / (MAD_TO_STD * math.sqrt(2.0))


def mse(x: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """Per-row mean squared error, [B]."""
    return tf.reduce_mean(tf.square(tf.cast(x, tf.float32) - tf.cast(reference, tf.float32)), -1)


def psnr(x: tf.Tensor, reference: tf.Tensor, peak: float = 1.0) -> tf.Tensor:
    """Per-row peak signal-to-noise ratio in dB, 10 log10(peak^2 / MSE), [B]."""
    err = tf.maximum(mse(x, reference), MIN_MSE)
    return 10.0 * (2.0 * math.log10(peak) - tf.math.log(err) / math.log(10.0))


def mean_impute(y: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Baseline: missing entries get the mean of that feature's observed entries in the batch."""
    counts = tf.reduce_sum(mask, 0)
    means = tf.math.divide_no_nan(tf.reduce_sum(y * mask, 0), counts)
    return mask * y + (1.0 - mask) * means[None, :]
