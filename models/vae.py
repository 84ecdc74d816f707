"""The AEVB model: a Gaussian recognition model q(z|x) and a decoder p(x|z) with a N(0, I) prior.

    q_phi(z|x)   = N(z; mu_phi(x), diag(sigma_phi(x)^2))        (encoder, Sec. C.2 of the paper)
    p(z)         = N(z; 0, I)
    p_theta(x|z) = prod_d  Bernoulli | Gaussian | ContinuousBernoulli  (decoder)

Encoder and decoder are MLPs (`model.architecture = "mlp"`, the paper's) or, for images,
convolutional (`"conv"`): stride-2 convolutions, then dense layers to the Gaussian heads; the
decoder mirrors them with dense layers and stride-2 transposed convolutions. Either network maps
flat vectors to flat vectors (the conv ones reshape to [H, W, C] inside), so the likelihoods, the
numerical guards and everything downstream are the same for both.

Networks are plain `tf.Module`s holding `tf.Variable`s, so checkpoints, SavedModels and compiled
steps see exactly the parameters we mean. `VAE` returns `tfd` distributions; the likelihood wraps
`tfd.Independent` so `log_prob` sums over the D features.

Shapes: x is [..., D] (flattened features in row-major order of feature_shape, float32 in model
space, e.g. [0, 1] pixels); z is [..., latent_dim].
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

from models import precision
from models.config import DEFAULT_MIN_STD, ModelConfig, check_architecture

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


def initial_weights(
    shape: list[int], fan_in: int, fan_out: int, n_bias: int, init: str, seed: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """(weights of ``shape``, bias [n_bias]): Glorot uniform and zero bias, or the paper's init."""
    if init == "paper":
        # Sec. 5: "parameters were initialized by random sampling from N(0, 0.01)": all of them,
        # biases included; the paper writes N(mean, variance), so the std is 0.1.
        w0 = tf.random.stateless_normal(shape, seed=[seed, 1], stddev=PAPER_INIT_STD)
        return w0, tf.random.stateless_normal([n_bias], seed=[seed, 2], stddev=PAPER_INIT_STD)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    w0 = tf.random.stateless_uniform(shape, seed=[seed, 1], minval=-limit, maxval=limit)
    return w0, tf.zeros([n_bias])


class Dense(tf.Module):
    """y = x W + b, with Glorot or the paper's N(0, 0.01) initialisation."""

    def __init__(self, n_in: int, n_out: int, init: str, seed: int, name: str | None = None):
        super().__init__(name=name)
        w0, b0 = initial_weights([n_in, n_out], n_in, n_out, n_out, init, seed)
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


def image_shape(feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W, C) of a 2-D (H, W) or 3-D (H, W, C) feature shape."""
    return (*feature_shape, 1) if len(feature_shape) == 2 else tuple(feature_shape)  # type: ignore[return-value]


def halved_sizes(h: int, w: int, n: int) -> list[tuple[int, int]]:
    """Spatial sizes through ``n`` stride-2 'SAME' convolutions: [(h, w), (ceil(h/2), ...), ...]."""
    sizes = [(h, w)]
    for _ in range(n):
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


class Conv2D(tf.Module):
    """Stride-2 'SAME' convolution [N, H, W, c_in] -> [N, ceil(H/2), ceil(W/2), c_out], plus bias."""

    def __init__(self, c_in: int, c_out: int, kernel: int, init: str, seed: int, name: str):
        super().__init__(name=name)
        area = kernel * kernel
        w0, b0 = initial_weights(
            [kernel, kernel, c_in, c_out], area * c_in, area * c_out, c_out, init, seed
        )
        self.w = tf.Variable(w0, name="w")
        self.b = tf.Variable(b0, name="b")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.conv2d(x, self.w, strides=2, padding="SAME") + self.b


class ConvTranspose2D(tf.Module):
    """Stride-2 'SAME' transposed convolution: the adjoint of the linear map of a `Conv2D` from
    ``size`` to (h, w) = ceil(size / 2); [N, h, w, c_in] -> [N, *size, c_out], plus bias."""

    def __init__(self, c_in: int, c_out: int, kernel: int, init: str, seed: int, name: str):
        super().__init__(name=name)
        area = kernel * kernel
        w0, b0 = initial_weights(
            [kernel, kernel, c_out, c_in], area * c_in, area * c_out, c_out, init, seed
        )
        self.w = tf.Variable(w0, name="w")
        self.b = tf.Variable(b0, name="b")

    def __call__(self, x: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
        out_shape = tf.stack([tf.shape(x)[0], size[0], size[1], self.w.shape[2]])
        return tf.nn.conv2d_transpose(x, self.w, out_shape, strides=2, padding="SAME") + self.b


def _flat_batch(t: tf.Tensor, inner: list[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """(t reshaped to [-1, *inner], its leading shape) so any batch shape [...] goes through."""
    return tf.reshape(t, [-1, *inner]), tf.shape(t)[:-1]


class ConvEncoder(tf.Module):
    """x [..., H*W*C] -> stride-2 convolutions (each followed by the activation) -> flatten ->
    `MLP` (hidden layers, linear output of width ``n_out``) -> [..., n_out]."""

    def __init__(self, config: ModelConfig, n_out: int, seed: int, name: str = "encoder"):
        super().__init__(name=name)
        self.shape = image_shape(config.feature_shape)
        channels = (self.shape[2], *config.conv_channels)
        self.convs = [
            Conv2D(a, b, config.conv_kernel_size, config.init, seed * 1000 + 500 + i, f"conv_{i}")
            for i, (a, b) in enumerate(zip(channels[:-1], channels[1:], strict=True))
        ]
        h, w = halved_sizes(self.shape[0], self.shape[1], len(self.convs))[-1]
        self.head = MLP(
            h * w * channels[-1],
            config.hidden_sizes,
            n_out,
            config.activation,
            config.init,
            seed,
            name="head",
        )
        self._activation = ACTIVATIONS[config.activation]

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        h, lead = _flat_batch(x, list(self.shape))
        for conv in self.convs:
            h = self._activation(conv(h))
        out = self.head(tf.reshape(h, [tf.shape(h)[0], -1]))
        return tf.reshape(out, tf.concat([lead, tf.shape(out)[-1:]], 0))


class ConvDecoder(tf.Module):
    """z [..., k] -> `MLP` (hidden layers reversed) -> activation -> reshape to the encoder's
    last feature map -> stride-2 transposed convolutions back to [H, W, out_channels] ->
    [..., H*W*out_channels] flat; with 2C output channels the first C are flattened first, so the
    output splits in halves like the MLP decoder's (mean logits, then log-variances)."""

    def __init__(self, config: ModelConfig, out_channels: int, seed: int, name: str = "decoder"):
        super().__init__(name=name)
        self.shape = image_shape(config.feature_shape)
        self.out_channels = out_channels
        self.sizes = halved_sizes(self.shape[0], self.shape[1], len(config.conv_channels))
        channels = (*reversed(config.conv_channels), out_channels)
        h, w = self.sizes[-1]
        self.body = MLP(
            config.latent_dim,
            tuple(reversed(config.hidden_sizes)),
            h * w * channels[0],
            config.activation,
            config.init,
            seed,
            name="body",
        )
        k = config.conv_kernel_size
        self.deconvs = [
            ConvTranspose2D(a, b, k, config.init, seed * 1000 + 500 + i, f"deconv_{i}")
            for i, (a, b) in enumerate(zip(channels[:-1], channels[1:], strict=True))
        ]
        self._activation = ACTIVATIONS[config.activation]

    def __call__(self, z: tf.Tensor) -> tf.Tensor:
        flat, lead = _flat_batch(z, [z.shape[-1]])
        h0, w0 = self.sizes[-1]
        h = tf.reshape(self._activation(self.body(flat)), [tf.shape(flat)[0], h0, w0, -1])
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h, self.sizes[-2 - i])
            if i < len(self.deconvs) - 1:
                h = self._activation(h)
        rows = tf.shape(h)[0]
        parts = tf.split(h, self.out_channels // self.shape[2], axis=-1)
        out = tf.concat([tf.reshape(p, [rows, -1]) for p in parts], axis=-1)
        return tf.reshape(out, tf.concat([lead, tf.shape(out)[-1:]], 0))


class VAE(tf.Module):
    """Recognition model q(z|x), generative model p(x|z) p(z)."""

    def __init__(self, config: ModelConfig, seed: int = 0, name: str = "vae"):
        super().__init__(name=name)
        check_architecture(config)
        self.config = config
        # The Gaussian decoder's std floor, model.min_std (the default is exactly LOG_VAR_MIN).
        self.log_var_min = (
            LOG_VAR_MIN if config.min_std == DEFAULT_MIN_STD else 2.0 * math.log(config.min_std)
        )
        d, k, h = config.input_dim, config.latent_dim, config.hidden_sizes
        outputs = 2 if config.likelihood == "gaussian" else 1  # mean logits (+ log-variances)
        if config.architecture == "conv":
            channels = image_shape(config.feature_shape)[2]
            self.encoder = ConvEncoder(config, 2 * k, seed=2 * seed + 1)
            self.decoder = ConvDecoder(config, outputs * channels, seed=2 * seed + 2)
            return
        self.encoder = MLP(
            d, h, 2 * k, config.activation, config.init, seed=2 * seed + 1, name="encoder"
        )
        self.decoder = MLP(
            k,
            tuple(reversed(h)),
            outputs * d,
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
            log_var = soft_clip(raw_log_var, self.log_var_min, LOG_VAR_MAX)
            base = tfd.Normal(loc=tf.sigmoid(mean_logits), scale=tf.exp(0.5 * log_var))
        return tfd.Independent(base, reinterpreted_batch_ndims=1)

    def decoder_std(self, z: tf.Tensor) -> tf.Tensor:
        """The Gaussian decoder's std [..., D] at z (its floor is model.min_std)."""
        return self.likelihood(z).distribution.scale

    def decode_mean(self, z: tf.Tensor) -> tf.Tensor:
        """E[x|z], [..., D]."""
        return self.likelihood(z).mean()


# A learned std within this factor of model.min_std counts as "on the floor" (the soft clip only
# approaches the floor: exp(0.5 * log_var) -> min_std as the raw log-variance -> -inf).
FLOOR_TOLERANCE = 1.1
FLOOR_WARN_FRACTION = 0.5  # warn when more than this fraction of pixels sit on the floor


def std_floor_fraction(model: VAE, x: tf.Tensor) -> float | None:
    """Fraction of the decoder std entries [rows, D] at z = E[z|x] within FLOOR_TOLERANCE of
    model.min_std; None for a decoder without a learned std (not gaussian)."""
    if model.config.likelihood != "gaussian":
        return None
    mean, _ = model.posterior_params(tf.convert_to_tensor(x, tf.float32))
    std = model.decoder_std(mean)
    on_floor = std <= model.config.min_std * FLOOR_TOLERANCE
    return float(tf.reduce_mean(tf.cast(on_floor, tf.float32)))
