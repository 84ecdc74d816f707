"""A linear-Gaussian latent variable model (probabilistic PCA) where log p(x) is exact.

    p(z)   = N(0, I_k)
    p(x|z) = N(x; W z + b, sigma^2 I_D)
    p(x)   = N(x; b, W W^T + sigma^2 I_D)                                   (exact marginal)
    p(z|x) = N(z; S W^T (x - b) / sigma^2, S),  S = (I + W^T W / sigma^2)^-1  (exact posterior)

The recognition model is linear, q(z|x) = N(z; A (x - b) + c, diag(s^2)), so it can represent the
exact posterior whenever S is diagonal, i.e. when W has orthogonal columns (`random(orthogonal=True)`);
`set_exact_posterior` then makes q equal p(z|x), and every log weight equals log p(x) exactly.

`LinearGaussian` has the same interface as `models.vae.VAE` (`posterior_params`, `posterior`,
`prior`, `likelihood`, `decode_mean`, `config`), so the estimators in `models.objectives` and
`models.marginal` run on it unchanged; `exact_log_marginal`, `exact_posterior` and
`analytic_elbo` give the closed forms tests compare them against. Shapes: x [..., D], z [..., k].
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from models.config import ModelConfig

tfd = tfp.distributions


class LinearGaussian(tf.Module):
    """Probabilistic PCA p(x|z) p(z) with a linear Gaussian recognition model q(z|x)."""

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray,
        noise_std: float,
        dtype: tf.DType = tf.float32,
        name: str = "linear_gaussian",
    ):
        super().__init__(name=name)
        weight = np.asarray(weight, dtype=np.float64)
        d, k = weight.shape
        self.dtype = dtype
        self.config = ModelConfig(
            feature_shape=(d,),
            latent_dim=k,
            hidden_sizes=(),
            activation="tanh",
            likelihood="gaussian",
        )
        self.weight = tf.Variable(tf.constant(weight, dtype), name="weight")  # W [D, k]
        self.bias = tf.Variable(
            tf.constant(np.asarray(bias).reshape(d), dtype), name="bias"
        )  # b [D]
        self.log_noise_std = tf.Variable(
            tf.constant(math.log(noise_std), dtype), name="log_noise_std"
        )
        # q(z|x) = N(A (x - b) + c, diag(s^2)); starts at the prior (A = 0, c = 0, s = 1).
        self.q_weight = tf.Variable(tf.zeros([k, d], dtype), name="q_weight")  # A [k, D]
        self.q_bias = tf.Variable(tf.zeros([k], dtype), name="q_bias")  # c [k]
        self.q_log_std = tf.Variable(tf.zeros([k], dtype), name="q_log_std")  # log s [k]

    @classmethod
    def random(
        cls,
        data_dim: int,
        latent_dim: int,
        noise_std: float = 0.5,
        seed: int = 0,
        orthogonal: bool = True,
        dtype: tf.DType = tf.float32,
    ) -> LinearGaussian:
        """A random model; with ``orthogonal`` W^T W is diagonal so the exact posterior is diagonal."""
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(data_dim, latent_dim))
        if orthogonal:
            q, _ = np.linalg.qr(w)
            w = q[:, :latent_dim] * rng.uniform(0.5, 2.0, size=latent_dim)
        return cls(w, rng.normal(scale=0.5, size=data_dim), noise_std, dtype=dtype)

    @property
    def noise_std(self) -> tf.Tensor:
        return tf.exp(self.log_noise_std)

    # -- the VAE interface -----------------------------------------------------------------------
    def posterior_params(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(mean, std) of q(z|x), each [..., k]."""
        mean = tf.linalg.matvec(self.q_weight, x - self.bias) + self.q_bias
        std = tf.broadcast_to(tf.exp(self.q_log_std), tf.shape(mean))
        return mean, std

    def posterior(self, x: tf.Tensor) -> tfd.Distribution:
        mean, std = self.posterior_params(x)
        return tfd.MultivariateNormalDiag(loc=mean, scale_diag=std)

    def prior(self) -> tfd.Distribution:
        k = self.config.latent_dim
        return tfd.MultivariateNormalDiag(
            loc=tf.zeros([k], self.dtype), scale_diag=tf.ones([k], self.dtype)
        )

    def likelihood(self, z: tf.Tensor) -> tfd.Distribution:
        """p(x|z) = N(W z + b, sigma^2 I): batch shape [...] of z, event shape [D]."""
        loc = tf.linalg.matvec(self.weight, z) + self.bias
        return tfd.Independent(
            tfd.Normal(loc=loc, scale=self.noise_std), reinterpreted_batch_ndims=1
        )

    def decode_mean(self, z: tf.Tensor) -> tf.Tensor:
        return self.likelihood(z).mean()

    # -- closed forms ----------------------------------------------------------------------------
    def _posterior_cov(self) -> tf.Tensor:
        """S = (I + W^T W / sigma^2)^-1, [k, k]."""
        k = self.config.latent_dim
        prec = tf.eye(k, dtype=self.dtype) + tf.matmul(
            self.weight, self.weight, transpose_a=True
        ) / tf.square(self.noise_std)
        return tf.linalg.inv(prec)

    def exact_log_marginal(self, x: tf.Tensor) -> tf.Tensor:
        """log p(x) = log N(x; b, W W^T + sigma^2 I), shape [...]."""
        d = self.config.input_dim
        cov = tf.matmul(self.weight, self.weight, transpose_b=True) + tf.square(
            self.noise_std
        ) * tf.eye(d, dtype=self.dtype)
        return tfd.MultivariateNormalTriL(
            loc=self.bias, scale_tril=tf.linalg.cholesky(cov)
        ).log_prob(x)

    def exact_posterior(self, x: tf.Tensor) -> tfd.Distribution:
        """p(z|x) = N(S W^T (x - b) / sigma^2, S) as a full-covariance MVN, batch shape [...]."""
        cov = self._posterior_cov()
        gain = tf.matmul(cov, self.weight, transpose_b=True) / tf.square(self.noise_std)  # [k, D]
        mean = tf.linalg.matvec(gain, x - self.bias)
        return tfd.MultivariateNormalTriL(loc=mean, scale_tril=tf.linalg.cholesky(cov))

    def set_exact_posterior(self) -> None:
        """Set q to the exact posterior mean map and the marginal posterior stds sqrt(diag S).

        q equals p(z|x) exactly only if S is diagonal (orthogonal W); otherwise q is the diagonal
        Gaussian with the exact mean and marginal variances, and the ELBO stays below log p(x).
        """
        cov = self._posterior_cov()
        self.q_weight.assign(
            tf.matmul(cov, self.weight, transpose_b=True) / tf.square(self.noise_std)
        )
        self.q_bias.assign(tf.zeros_like(self.q_bias))
        self.q_log_std.assign(0.5 * tf.math.log(tf.linalg.diag_part(cov)))

    def analytic_elbo(self, x: tf.Tensor) -> tf.Tensor:
        """E_q[log p(x|z)] - KL(q || p(z)) in closed form for the current q, shape [...].

        E_q ||x - W z - b||^2 = ||x - W m - b||^2 + sum_j s_j^2 ||W_:j||^2 for q = N(m, diag(s^2)).
        """
        mean, std = self.posterior_params(x)
        var = tf.square(self.noise_std)
        d = float(self.config.input_dim)
        resid = x - tf.linalg.matvec(self.weight, mean) - self.bias
        trace = tf.reduce_sum(
            tf.square(std) * tf.reduce_sum(tf.square(self.weight), axis=0), axis=-1
        )
        expected_ll = (
            -0.5 * d * tf.math.log(2.0 * math.pi * var)
            - 0.5 * (tf.reduce_sum(tf.square(resid), -1) + trace) / var
        )
        kl = tfd.kl_divergence(tfd.MultivariateNormalDiag(mean, std), self.prior())
        return expected_ll - kl

    def sample_data(self, num: int, seed: int = 0) -> tf.Tensor:
        """x ~ p(x), [num, D]."""
        k, d = self.config.latent_dim, self.config.input_dim
        z = tf.random.stateless_normal([num, k], seed=[seed, 11], dtype=self.dtype)
        eps = tf.random.stateless_normal([num, d], seed=[seed, 12], dtype=self.dtype)
        return tf.linalg.matvec(self.weight, z) + self.bias + self.noise_std * eps


__all__ = ["LinearGaussian"]
