"""Marginal inference of x: restoring degraded inputs with a trained VAE as the prior over x.

The degradations y ~ p(y | x) and the quality measures are in models/degradations.py.

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
from typing import Literal, Protocol, get_args

import tensorflow as tf
import tensorflow_probability as tfp

from models.degradations import (
    MIN_STD,
    DegradationSpec,
    downsample,
    estimate_noise_std,
    upsample_nearest,
)
from models.errors import ConfigError

tfd = tfp.distributions

Method = Literal["amortized", "map", "pseudo_gibbs", "mwg"]
INPAINT_ONLY: tuple[str, ...] = ("pseudo_gibbs", "mwg")


class GenerativeModel(Protocol):
    """What restoration needs from a VAE (models.vae.VAE satisfies it)."""

    def posterior_params(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]: ...
    def likelihood(self, z: tf.Tensor) -> tfd.Distribution: ...
    def decode_mean(self, z: tf.Tensor) -> tf.Tensor: ...


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
        compile_ = tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
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
