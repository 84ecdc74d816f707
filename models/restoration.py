"""Marginal inference of x: restoring degraded inputs with a trained VAE as the prior over x.

A degradation maps a clean x [B, D] to an observation y with a known likelihood p(y | x):

    gaussian     y = x + sigma * eps                      log N(y; x, sigma^2)
    salt_pepper  y_d = x_d w.p. 1-p, else low/high        log[(1-p) N(y_d; x_d, s0^2) Delta
                                                               + p/2 [y_d in {low, high}]]
    inpaint      y_d = x_d where mask_d = 1 (observed)    sum_{d observed} log p_theta(x_d = y_d | z)
    superres     y = avgpool_s(x) + sigma_y * eps         log N(y; avgpool_s(x), sigma_y^2)

Restoration methods, with x_hat(z) = E[x | z] the decoder mean:
- amortized: z = mean of q(z | y~) for the degraded input y~ (inpaint: missing entries as stored,
  superres: nearest-neighbour upsampled); x = x_hat(z).
- latent MAP: z* = argmax_z log p(y | degrade(x_hat(z))) + log p(z), started at the amortized z
  and solved by Adam with cosine-decayed steps inside one compiled loop; x = x_hat(z*).
- inpainting only, keeping observed entries fixed (Mattei & Frellsen, 2018):
  pseudo-Gibbs   z_t ~ q(z | x_obs, x_mis), x_mis ~ p(x_mis | z_t);
  Metropolis-within-Gibbs: the same proposal, accepted with probability
      min(1, p(x | z') p(z') q(z_t | x) / [p(x | z_t) p(z_t) q(z' | x)]),   x = (x_obs, x_mis),
  which makes (z, x_mis) a Markov chain whose stationary law is p(z, x_mis | x_obs).
  Both return the Rao-Blackwellised estimate mean_t E[x_mis | z_t] over the iterations after burn-in.

Shapes: x, mask [B, D] (D = prod(feature_shape)); y [B, D] or [B, D / s^2] for superres; z [B, k].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Protocol, get_args

import tensorflow as tf
import tensorflow_probability as tfp

from models.errors import ConfigError

tfd = tfp.distributions

Degradation = Literal["gaussian", "salt_pepper", "inpaint", "superres"]
Method = Literal["amortized", "map", "pseudo_gibbs", "mwg"]
INPAINT_ONLY: tuple[str, ...] = ("pseudo_gibbs", "mwg")
# Gaussian MAD: median(|N(0, 1)|) = Phi^-1(3/4).
MAD_TO_STD = 0.6744897501960817
MIN_MSE = 1e-12
MIN_STD = 1e-3


class GenerativeModel(Protocol):
    """What restoration needs from a VAE (models.vae.VAE satisfies it)."""

    def posterior_params(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]: ...
    def likelihood(self, z: tf.Tensor) -> tfd.Distribution: ...
    def decode_mean(self, z: tf.Tensor) -> tf.Tensor: ...


@dataclass(frozen=True)
class DegradationSpec:
    """A degradation and its parameters; ``feature_shape`` is the clean (model) shape.

    ``noise_std``: gaussian sigma (None: estimate it from y with `estimate_noise_std`), or the
    superres observation noise sigma_y. ``amount``: salt-and-pepper fraction p, or inpainting's
    missing fraction for random pixels. ``block``: inpainting with one missing block x block square
    per image instead of random pixels (0 = random pixels). ``low``/``high``: the value range (salt
    and pepper values, PSNR peak = high - low). ``clean_std``: s0 of the salt-and-pepper model.
    """

    kind: Degradation
    feature_shape: tuple[int, ...]
    noise_std: float | None = None
    amount: float = 0.5
    factor: int = 2
    block: int = 0
    low: float = 0.0
    high: float = 1.0
    clean_std: float = 0.1
    quantum: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(Degradation):
            raise ConfigError(
                f"degradation {self.kind!r} is not known; choose one of {get_args(Degradation)}"
            )
        object.__setattr__(self, "feature_shape", tuple(int(d) for d in self.feature_shape))
        if self.noise_std is not None and not self.noise_std > 0:
            raise ConfigError(f"noise_std={self.noise_std!r} must be > 0 (or unset to estimate)")
        if not 0.0 < self.amount < 1.0:
            raise ConfigError(f"amount={self.amount!r} must lie in (0, 1)")
        if not self.high > self.low:
            raise ConfigError(f"value range [{self.low}, {self.high}] must have high > low")
        if self.kind == "superres":
            if len(self.feature_shape) < 2:
                raise ConfigError(
                    f"superres needs image features [H, W(, C)]; the model's feature_shape is "
                    f"{list(self.feature_shape)}: use a dataset ingested as images"
                )
            h, w = self.feature_shape[:2]
            if self.factor < 2 or h % self.factor or w % self.factor:
                raise ConfigError(
                    f"factor={self.factor} must be >= 2 and divide the image size {h}x{w}"
                )
        if self.block and (len(self.feature_shape) < 2 or self.block > min(self.feature_shape[:2])):
            raise ConfigError(
                f"block={self.block} needs image features of at least {self.block}x{self.block}"
            )

    @property
    def input_dim(self) -> int:
        return math.prod(self.feature_shape)

    @property
    def observed_shape(self) -> tuple[int, ...]:
        if self.kind != "superres":
            return self.feature_shape
        h, w, *c = self.feature_shape
        return (h // self.factor, w // self.factor, *c)

    @property
    def peak(self) -> float:
        return self.high - self.low


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


# ------------------------------------------------------------------------------- likelihoods


def pointwise_log_prob(model: GenerativeModel, z: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """log p_theta(x_d | z) per feature, [..., D] (the decoder's `Independent` unwrapped)."""
    dist = model.likelihood(z)
    base = dist.distribution if isinstance(dist, tfd.Independent) else dist
    return base.log_prob(x)


def observation_log_likelihood(
    spec: DegradationSpec,
    model: GenerativeModel,
    z: tf.Tensor,
    y: tf.Tensor,
    mask: tf.Tensor,
    noise_std: tf.Tensor | float | None = None,
) -> tf.Tensor:
    """log p(y | z) of the degradation model (see the module docstring), [B].

    ``noise_std`` overrides ``spec.noise_std`` (used while the level is being estimated).
    """
    std = spec.noise_std if noise_std is None else noise_std
    if spec.kind == "inpaint":
        return tf.reduce_sum(mask * pointwise_log_prob(model, z, y), -1)
    x_hat = model.decode_mean(z)
    if spec.kind == "superres":
        pred = downsample(x_hat, spec.feature_shape, spec.factor)
        return tf.reduce_sum(tfd.Normal(pred, std).log_prob(y), -1)
    if spec.kind == "gaussian":
        return tf.reduce_sum(tfd.Normal(x_hat, std).log_prob(y), -1)
    return tf.reduce_sum(tf.reduce_logsumexp(_salt_pepper_terms(spec, x_hat, y), 0), -1)


def _salt_pepper_terms(spec: DegradationSpec, x_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """[2, B, D]: log of (clean, corrupted) joint terms of each observed entry."""
    clean = math.log1p(-spec.amount) + math.log(spec.quantum)
    clean = clean + tfd.Normal(x_hat, spec.clean_std).log_prob(y)
    extreme = tf.logical_or(tf.equal(y, spec.low), tf.equal(y, spec.high))
    corrupt = tf.where(extreme, math.log(spec.amount / 2.0), -math.inf)
    return tf.stack([clean, corrupt])


def salt_pepper_posterior_mean(spec: DegradationSpec, x_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """E[x_d | y_d, x_hat]: y_d where it cannot be corrupted, else r_d x_hat_d + (1 - r_d) y_d with
    r_d = P(corrupted | y_d, x_hat_d) (entries that are not low/high are clean observations)."""
    r = tf.nn.softmax(_salt_pepper_terms(spec, x_hat, y), axis=0)[1]
    return r * x_hat + (1.0 - r) * y


# ------------------------------------------------------------------------------- methods


def _log_prior(z: tf.Tensor) -> tf.Tensor:
    """log N(z; 0, I) per row, [B]."""
    k = z.shape[-1]
    return -0.5 * tf.reduce_sum(tf.square(z), -1) - 0.5 * k * math.log(2.0 * math.pi)


class Restorer(tf.Module):
    """Compiled, batched restoration of one degradation with one model.

    ``map_steps``/``learning_rate``: Adam with a cosine-decayed step for latent MAP.
    ``iterations``/``burn_in``: chain length and discarded prefix of the inpainting samplers.
    """

    def __init__(
        self,
        model: GenerativeModel,
        spec: DegradationSpec,
        *,
        map_steps: int = 200,
        learning_rate: float = 0.05,
        iterations: int = 200,
        burn_in: int = 50,
        jit_compile: bool = True,
    ):
        super().__init__(name="restorer")
        if spec.kind == "superres" and spec.noise_std is None:
            raise ConfigError("superres: noise_std (the observation noise sigma_y) is unset")
        if map_steps < 1 or iterations < 1 or not 0 <= burn_in < iterations:
            raise ConfigError(
                f"map_steps={map_steps} and iterations={iterations} must be >= 1, "
                f"burn_in={burn_in} in [0, iterations)"
            )
        self.model, self.spec = model, spec
        self.map_steps, self.learning_rate = int(map_steps), float(learning_rate)
        self.iterations, self.burn_in = int(iterations), int(burn_in)
        compile_ = tf.function(jit_compile=jit_compile, reduce_retracing=True)
        self._amortized_z = compile_(self._amortized_z_impl)
        self._map_z = compile_(self._map_impl)
        self._decode = compile_(model.decode_mean)
        self._pseudo_gibbs = compile_(self._pseudo_gibbs_impl)
        self._mwg = compile_(self._mwg_impl)

    # -- public ----------------------------------------------------------------------------------
    def restore(
        self, method: Method, y: tf.Tensor, mask: tf.Tensor | None = None, seed: tf.Tensor = (0, 0)
    ) -> tuple[tf.Tensor, dict[str, float]]:
        """(restored x [B, D], diagnostics). ``mask`` is required for inpaint (1 = observed)."""
        y = tf.convert_to_tensor(y, tf.float32)
        mask = self._mask(y, mask)
        seed = tf.convert_to_tensor(seed, tf.int32)
        if method in INPAINT_ONLY and self.spec.kind != "inpaint":
            raise ConfigError(f"method {method!r} applies to inpaint only, not {self.spec.kind!r}")
        z0 = self._amortized_z(y, mask)
        if method == "amortized":
            return self._finish(self._decode(z0), y, mask), {}
        if method == "map":
            std0 = self.spec.noise_std or 1.0
            if self.spec.kind == "gaussian" and self.spec.noise_std is None:
                std0 = estimate_noise_std(y, self.spec.feature_shape)
            z, std = self._map_z(y, mask, z0, tf.math.log(tf.maximum(std0, MIN_STD)))
            learnt = self.spec.kind == "gaussian" and self.spec.noise_std is None
            diagnostics = {"noise_std": float(std)} if learnt else {}
            return self._finish(self._decode(z), y, mask), diagnostics
        if method == "pseudo_gibbs":
            return self._pseudo_gibbs(y, mask, z0, seed), {}
        if method == "mwg":
            x, rate = self._mwg(y, mask, z0, seed)
            return x, {"acceptance_rate": float(rate)}
        raise ConfigError(f"method {method!r} is not known; choose one of {get_args(Method)}")

    def _mask(self, y: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
        if self.spec.kind == "inpaint":
            if mask is None:
                raise ConfigError("inpaint needs a mask (1 = observed, 0 = missing)")
            return tf.convert_to_tensor(mask, tf.float32)
        return tf.ones_like(y)

    def _finish(self, x_hat: tf.Tensor, y: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Restored x from the decoder mean: observed entries kept (inpaint), entries that cannot
        be corrupted kept and the others blended by their posterior (salt_pepper)."""
        if self.spec.kind == "inpaint":
            return mask * y + (1.0 - mask) * x_hat
        if self.spec.kind == "salt_pepper":
            return salt_pepper_posterior_mean(self.spec, x_hat, y)
        return x_hat

    # -- compiled bodies -------------------------------------------------------------------------
    def _encoder_input(self, y: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        s = self.spec
        if s.kind == "superres":
            return upsample_nearest(y, s.feature_shape, s.factor)
        if s.kind == "inpaint":
            return mask * y
        return tf.clip_by_value(y, s.low, s.high)

    def _amortized_z_impl(self, y: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        return self.model.posterior_params(self._encoder_input(y, mask))[0]

    def _map_impl(self, y, mask, z0, log_std0):
        """Adam on -sum_b [log p(y_b | z_b) + log p(z_b)]; rows are independent problems (Adam is
        elementwise). With gaussian noise of unknown level, log sigma (shared by the batch) is
        optimised jointly, started at the MAD estimate. Returns (z*, sigma)."""
        b1, b2, eps, steps = 0.9, 0.999, 1e-8, float(self.map_steps)
        learn_std = self.spec.kind == "gaussian" and self.spec.noise_std is None

        def body(t, params, m, v):
            with tf.GradientTape() as tape:
                tape.watch(params)
                z, log_std = params
                std = tf.exp(log_std) if learn_std else None
                log_lik = observation_log_likelihood(self.spec, self.model, z, y, mask, std)
                loss = -tf.reduce_sum(log_lik + _log_prior(z))
            grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            tt = tf.cast(t, tf.float32)
            rate = self.learning_rate * 0.5 * (1.0 + tf.cos(math.pi * tt / steps))
            out = [[], [], []]
            for p, g, m_, v_ in zip(params, grads, m, v, strict=True):
                m_, v_ = b1 * m_ + (1 - b1) * g, b2 * v_ + (1 - b2) * g * g
                step = (
                    rate * (m_ / (1 - b1 ** (tt + 1))) / (tf.sqrt(v_ / (1 - b2 ** (tt + 1))) + eps)
                )
                for lst, val in zip(out, (p - step, m_, v_), strict=True):
                    lst.append(val)
            return t + 1, *out

        zero = [tf.zeros_like(z0), tf.zeros_like(log_std0)]
        _, (z, log_std), _, _ = tf.while_loop(
            lambda t, *_: t < self.map_steps, body, (tf.constant(0), [z0, log_std0], zero, zero)
        )
        return z, tf.exp(log_std)

    def _chain(self, y, mask, z0, seed, mh: bool):
        """Shared loop of both samplers: returns (mean_t E[x|z_t] after burn-in, accepted count)."""
        model = self.model
        x0 = mask * y + (1.0 - mask) * model.decode_mean(z0)

        def log_target(z, x):  # log p(x | z) + log p(z), [B]
            return tf.reduce_sum(pointwise_log_prob(model, z, x), -1) + _log_prior(z)

        def body(t, z, x, total, accepted):
            s = tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, t), 3
            )
            mean, std = model.posterior_params(x)
            prop = mean + std * tf.random.stateless_normal(tf.shape(mean), seed=s[0])
            if mh:
                q = tfd.MultivariateNormalDiag(mean, std)
                log_ratio = (
                    log_target(prop, x) - log_target(z, x) + q.log_prob(z) - q.log_prob(prop)
                )
                u = tf.random.stateless_uniform(tf.shape(log_ratio), seed=s[1])
                take = tf.math.log(u) < log_ratio
                z = tf.where(take[:, None], prop, z)
                accepted += tf.reduce_sum(tf.cast(take, tf.float32))
            else:
                z = prop
            px = model.likelihood(z)
            x = mask * y + (1.0 - mask) * px.sample(seed=s[2])
            keep = tf.cast(t >= self.burn_in, tf.float32)
            return t + 1, z, x, total + keep * px.mean(), accepted

        _, _, _, total, accepted = tf.while_loop(
            lambda t, *_: t < self.iterations,
            body,
            (tf.constant(0), z0, x0, tf.zeros_like(x0), tf.constant(0.0)),
        )
        x_mean = total / float(self.iterations - self.burn_in)
        return mask * y + (1.0 - mask) * x_mean, accepted

    def _pseudo_gibbs_impl(self, y, mask, z0, seed):
        return self._chain(y, mask, z0, seed, mh=False)[0]

    def _mwg_impl(self, y, mask, z0, seed):
        x, accepted = self._chain(y, mask, z0, seed, mh=True)
        rows = tf.cast(tf.shape(y)[0], tf.float32)
        return x, accepted / (rows * float(self.iterations))


def with_estimated_noise(spec: DegradationSpec, y: tf.Tensor) -> DegradationSpec:
    """The spec with noise_std set to the MAD estimate from y when it is unset (gaussian only)."""
    if spec.kind != "gaussian" or spec.noise_std is not None:
        return spec
    return replace(spec, noise_std=max(float(estimate_noise_std(y, spec.feature_shape)), MIN_STD))
