"""The AEVB model: a Gaussian recognition model q(z|x) and a decoder p(x|z) with a N(0, I) prior.

    q_phi(z|x)   = N(z; mu_phi(x), diag(sigma_phi(x)^2))        (encoder MLP, Sec. C.2 of the paper)
    p(z)         = N(z; 0, I)
    p_theta(x|z) = prod_d  Bernoulli | Gaussian | ContinuousBernoulli  (decoder MLP)

Networks are plain `tf.Module`s holding `tf.Variable`s, so checkpoints, SavedModels and compiled
steps see exactly the parameters we mean. Encoder and decoder return `tfd` distributions; the
decoder wraps `tfd.Independent` so `log_prob` sums over the D features.

Shapes: x is [..., D] (flattened features, float32 in model space, e.g. [0, 1] pixels);
z is [..., latent_dim].
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

from models import precision
from models.config import ModelConfig

tfd = tfp.distributions

# Bounds that keep exp(log_var) finite and positive in float32 for any input.
LOG_VAR_MIN = -12.0
LOG_VAR_MAX = 8.0
PAPER_INIT_STD = 0.1  # N(0, 0.01) in the paper's (mean, variance) notation

ACTIVATIONS = {
    "tanh": tf.math.tanh,
    "relu": tf.nn.relu,
    "softplus": tf.math.softplus,
    "elu": tf.nn.elu,
}


def soft_clip(x: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """Smoothly keep x inside (low, high): gradients never vanish abruptly as with a hard clip."""
    mid, half = (high + low) / 2.0, (high - low) / 2.0
    return mid + half * tf.math.tanh((x - mid) / half)


class Dense(tf.Module):
    """y = activation(x W + b), with Glorot or the paper's N(0, 0.01) initialisation."""

    def __init__(self, n_in: int, n_out: int, init: str, seed: int, name: str | None = None):
        super().__init__(name=name)
        if init == "paper":
            # Sec. 5: "parameters were initialized by random sampling from N(0, 0.01)": all of them,
            # biases included; the paper writes N(mean, variance), so the std is 0.1.
            w0 = tf.random.stateless_normal([n_in, n_out], seed=[seed, 1], stddev=PAPER_INIT_STD)
            b0 = tf.random.stateless_normal([n_out], seed=[seed, 2], stddev=PAPER_INIT_STD)
        else:
            limit = math.sqrt(6.0 / (n_in + n_out))
            w0 = tf.random.stateless_uniform(
                [n_in, n_out], seed=[seed, 1], minval=-limit, maxval=limit
            )
            b0 = tf.zeros([n_out])
        self.w = tf.Variable(w0, name="w")
        self.b = tf.Variable(b0, name="b")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return precision.matmul(x, self.w) + self.b  # bf16 under train.precision=mixed_bfloat16


class MLP(tf.Module):
    """Hidden layers with a shared activation and a linear output layer of width ``n_out``."""

    def __init__(
        self,
        n_in: int,
        hidden: tuple[int, ...],
        n_out: int,
        activation: str,
        init: str,
        seed: int,
        name: str | None = None,
    ):
        super().__init__(name=name)
        sizes = (n_in, *hidden, n_out)
        self.layers = [
            Dense(a, b, init, seed=seed * 1000 + i, name=f"dense_{i}")
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        ]
        self._activation = ACTIVATIONS[activation]

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        for layer in self.layers[:-1]:
            x = self._activation(layer(x))
        return self.layers[-1](x)


class VAE(tf.Module):
    """Recognition model q(z|x), generative model p(x|z) p(z)."""

    def __init__(self, config: ModelConfig, seed: int = 0, name: str = "vae"):
        super().__init__(name=name)
        self.config = config
        d, k, h = config.input_dim, config.latent_dim, config.hidden_sizes
        self.encoder = MLP(
            d, h, 2 * k, config.activation, config.init, seed=2 * seed + 1, name="encoder"
        )
        n_dec_out = 2 * d if config.likelihood == "gaussian" else d
        self.decoder = MLP(
            k,
            tuple(reversed(h)),
            n_dec_out,
            config.activation,
            config.init,
            seed=2 * seed + 2,
            name="decoder",
        )

    # -- q(z|x) ----------------------------------------------------------------------------------
    def posterior_params(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(mean, std) of q(z|x), each [..., latent_dim]; log-variance soft-clipped for stability."""
        out = self.encoder(x)
        mean, raw_log_var = tf.split(out, 2, axis=-1)
        log_var = soft_clip(raw_log_var, LOG_VAR_MIN, LOG_VAR_MAX)
        return mean, tf.exp(0.5 * log_var)

    def posterior(self, x: tf.Tensor) -> tfd.Distribution:
        """q(z|x): batch shape [...], event shape [latent_dim]."""
        mean, std = self.posterior_params(x)
        return tfd.MultivariateNormalDiag(loc=mean, scale_diag=std)

    def prior(self) -> tfd.Distribution:
        """p(z) = N(0, I): event shape [latent_dim]."""
        k = self.config.latent_dim
        return tfd.MultivariateNormalDiag(loc=tf.zeros([k]), scale_diag=tf.ones([k]))

    # -- p(x|z) ----------------------------------------------------------------------------------
    def likelihood(self, z: tf.Tensor) -> tfd.Distribution:
        """p(x|z): batch shape [...] of z, event shape [D]."""
        out = self.decoder(z)
        kind = self.config.likelihood
        if kind == "bernoulli":
            base = tfd.Bernoulli(logits=out, dtype=tf.float32)
        elif kind == "continuous_bernoulli":
            base = tfd.ContinuousBernoulli(logits=out)
        else:  # gaussian: the paper's Frey Face decoder, mean through a sigmoid, learned variance.
            mean_logits, raw_log_var = tf.split(out, 2, axis=-1)
            log_var = soft_clip(raw_log_var, LOG_VAR_MIN, LOG_VAR_MAX)
            base = tfd.Normal(loc=tf.sigmoid(mean_logits), scale=tf.exp(0.5 * log_var))
        return tfd.Independent(base, reinterpreted_batch_ndims=1)

    def decode_mean(self, z: tf.Tensor) -> tf.Tensor:
        """E[x|z], [..., D]."""
        return self.likelihood(z).mean()
