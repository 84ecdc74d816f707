"""Monte Carlo EM with HMC posterior sampling: the paper's batch baseline (App. E), on AEVB's decoder.

There is no recognition model. Each training point i keeps a persistent Markov chain z_i, started
at a draw from p(z), whose stationary law is the exact posterior p_theta(z|x_i) ∝ p_theta(x_i|z) p(z).
Per minibatch:

    E step (Monte Carlo):  z_i <- HMC(z_i; target log p_theta(x_i|z) + log p(z)),
                           ``num_leapfrog_steps`` leapfrog steps per transition; one shared step size
                           adapted by log s <- log s + rate * (mean acceptance - target), so the
                           acceptance rate settles near ``target_accept_prob`` (0.9 in the paper)
    M step:                ``updates_per_sample`` gradient steps on theta of
                           1/M sum_i log p_theta(x_i|z_i) + log p(theta)/N   with the z_i held fixed

HMC mixes well only in low dimension; use it for small latent sizes (the paper used 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf
import tensorflow_probability as tfp

from models.config import TrainConfig
from models.errors import ConfigError, TrainingDivergedError
from models.optim import make_optimizer
from models.vae import VAE


@dataclass(frozen=True)
class HMCSettings:
    """App. E: 10 leapfrog steps, ~90 % acceptance, 5 weight updates per sampling round."""

    num_leapfrog_steps: int = 10
    num_hmc_steps: int = 1  # HMC transitions per chain per sampling round
    updates_per_sample: int = 5
    target_accept_prob: float = 0.9
    initial_step_size: float = 0.1
    adaptation_rate: float = 0.5

    def __post_init__(self) -> None:
        for name in ("num_leapfrog_steps", "num_hmc_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"mcem.{name}={value!r} must be an integer >= 1")
        if (
            isinstance(self.updates_per_sample, bool)
            or not isinstance(self.updates_per_sample, int)
            or self.updates_per_sample < 0
        ):
            raise ConfigError(
                f"mcem.updates_per_sample={self.updates_per_sample!r} must be an integer >= 0"
            )
        if not 0.0 < self.target_accept_prob < 1.0:
            raise ConfigError(
                f"mcem.target_accept_prob={self.target_accept_prob!r} must be in (0, 1)"
            )
        for name in ("initial_step_size", "adaptation_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"mcem.{name}={getattr(self, name)!r} must be > 0")


class MCEMTrainer:
    """Persistent-chain HMC E step + gradient M step on the decoder of ``model``.

    ``train_step(x, index, seed)``: x [M, D] float32, index [M] int (row numbers in the training
    set, 0 <= index < num_train, selecting each point's chain), seed [2] int. Returns scalar
    tensors ``log_joint`` (mean log p(x, z) at the last M-step update), ``accept`` (mean
    acceptance probability of the last HMC transition) and ``step_size``.
    """

    def __init__(
        self, model: VAE, config: TrainConfig, num_train: int, hmc: HMCSettings | None = None
    ):
        self.model, self.config, self.num_train = model, config, int(num_train)
        self.hmc = hmc or HMCSettings()
        self.variables = list(model.decoder.trainable_variables)
        self.optimizer = make_optimizer(config.optimizer, self.variables, config.learning_rate)
        k = model.config.latent_dim
        # Chains start at independent prior draws (a deterministic function of train.seed).
        init = tf.random.stateless_normal([self.num_train, k], seed=[config.seed, 17], alg="philox")
        self.chains = tf.Variable(init, trainable=False, name="chains")
        self.log_step_size = tf.Variable(
            math.log(self.hmc.initial_step_size), trainable=False, name="log_step_size"
        )
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self._sample = tf.function(self._sample_impl, jit_compile=config.jit_compile)
        self._round = tf.function(self._round_impl, jit_compile=config.jit_compile)

    def log_joint(self, x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """log p_theta(x|z) + log p(z), shape [M] for x [M, D], z [M, k]."""
        return self.model.likelihood(z).log_prob(x) + self.model.prior().log_prob(z)

    def _sample_impl(self, x: tf.Tensor, index: tf.Tensor, seed: tf.Tensor):
        kernel = tfp.mcmc.HamiltonianMonteCarlo(
            target_log_prob_fn=lambda z: self.log_joint(x, z),
            step_size=tf.exp(self.log_step_size),
            num_leapfrog_steps=self.hmc.num_leapfrog_steps,
        )
        z = tf.gather(self.chains, index)
        results = kernel.bootstrap_results(z)
        accept = tf.constant(0.0)
        for t in range(self.hmc.num_hmc_steps):
            z, results = kernel.one_step(
                z, results, seed=tf.random.experimental.stateless_fold_in(seed, t)
            )
            accept = tf.reduce_mean(tf.exp(tf.minimum(results.log_accept_ratio, 0.0)))
        self.chains.scatter_nd_update(index[:, None], z)
        self.log_step_size.assign_add(
            self.hmc.adaptation_rate * (accept - self.hmc.target_accept_prob)
        )
        return z, accept

    def _update_impl(self, x: tf.Tensor, z: tf.Tensor):
        with tf.GradientTape() as tape:
            log_joint = tf.reduce_mean(self.log_joint(x, z))
            loss = -log_joint
            if self.config.weight_decay > 0:
                sq = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.variables])
                loss += 0.5 * self.config.weight_decay * sq / float(self.num_train)
        grads = tape.gradient(loss, self.variables)
        self.optimizer.apply(grads, self.variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return log_joint, tf.logical_and(finite, tf.math.is_finite(loss))

    def _round_impl(self, x: tf.Tensor, index: tf.Tensor, seed: tf.Tensor):
        z, accept = self._sample_impl(x, index, seed)
        log_joint, finite = tf.reduce_mean(self.log_joint(x, z)), tf.math.is_finite(accept)
        for _ in range(self.hmc.updates_per_sample):
            log_joint, finite_u = self._update_impl(x, z)
            finite = tf.logical_and(finite, finite_u)
        return log_joint, accept, finite

    def sample_posterior(
        self, x: tf.Tensor, index: tf.Tensor, seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """E step only: advance the chains of rows ``index``; returns (z [M, k], mean acceptance)."""
        return self._sample(x, tf.convert_to_tensor(index, tf.int32), seed)

    def train_step(self, x: tf.Tensor, index: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """One sampling round then ``updates_per_sample`` weight updates; NaN/Inf raises."""
        log_joint, accept, finite = self._round(x, tf.convert_to_tensor(index, tf.int32), seed)
        if not bool(finite):
            raise TrainingDivergedError(
                f"MCEM diverged: NaN/Inf at step {int(self.step.numpy())}; lower train.learning_rate "
                "or mcem.initial_step_size",
                epoch=0,
                step=int(self.step.numpy()),
            )
        self.step.assign_add(1)
        return {"log_joint": log_joint, "accept": accept, "step_size": tf.exp(self.log_step_size)}


__all__ = ["HMCSettings", "MCEMTrainer"]
