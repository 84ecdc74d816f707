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

The prior log p(theta) = -w/2 ||theta||^2 enters as the optimiser's decay w/N
(`models.optim.for_training`). Every M-step update is guarded (nothing applied on NaN/Inf), and an
E step whose chains or acceptance are not finite is not kept. HMC mixes well only in low
dimension; use it for small latent sizes (the paper used 3).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import tensorflow as tf
import tensorflow_probability as tfp

from models.config import TrainConfig
from models.errors import ConfigError, ModelError
from models.optim import for_training
from models.training import LoopState, MetricSums, batch_size, check_num_train, fingerprint
from models.vae import VAE

TRAIN_LOG_JOINT = "train_log_joint"  # mean log p(x, z) at the chains, at the last M-step update
TRAIN_ACCEPT = "train_accept"  # mean HMC acceptance probability
CHAIN_SEED_STREAM = 17  # chains start from prior draws with the seed [train.seed, 17]


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
    """Persistent-chain HMC E step + gradient M step on the decoder of ``model``: a `Step`.

    ``update((x, index))``: x [M, D] float32, index [M] int32 (row numbers in the training set,
    0 <= index < num_train, selecting each point's chain); one sampling round with the seed
    [train.seed, step], then ``updates_per_sample`` weight updates. Returns whether every part was
    applied. Epoch metrics: ``train_log_joint`` and ``train_accept``. There is no recognition
    model, so no bound to validate with: run it with ``valid_data=None``.
    """

    def __init__(
        self, model: VAE, config: TrainConfig, num_train: int, hmc: HMCSettings | None = None
    ):
        self.model, self.config, self.num_train = model, config, check_num_train(num_train)
        self.hmc = hmc or HMCSettings()
        self.variables = list(model.decoder.trainable_variables)
        self.optimizer = for_training(config, self.variables, self.num_train)
        hmc_fields = dataclasses.asdict(self.hmc)
        fp = fingerprint(config, model, self.num_train, method="mcem", **hmc_fields)
        self.state = LoopState(self.variables, fp)
        self.sums = MetricSums((TRAIN_LOG_JOINT, TRAIN_ACCEPT))
        k = model.config.latent_dim
        # Chains start at independent prior draws (a deterministic function of train.seed).
        init = tf.random.stateless_normal(
            [self.num_train, k], seed=[config.seed, CHAIN_SEED_STREAM], alg="philox"
        )
        self.chains = tf.Variable(init, trainable=False, name="chains")
        self.log_step_size = tf.Variable(
            math.log(self.hmc.initial_step_size), trainable=False, name="log_step_size"
        )
        self._seed = tf.constant(config.seed, tf.int32)
        self._sample = tf.function(
            self._sample_impl, jit_compile=config.jit_compile, autograph=False
        )
        self.update = tf.function(self._update, jit_compile=config.jit_compile, autograph=False)

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
        # HMC rejects NaN proposals, so check the target at the kept states too: NaN data must not
        # move the chains or the step size.
        target = results.accepted_results.target_log_prob
        finite = tf.math.is_finite(tf.reduce_sum(z) + tf.reduce_sum(target) + accept)

        def keep() -> None:
            self.chains.scatter_nd_update(index[:, None], z)
            self.log_step_size.assign_add(
                self.hmc.adaptation_rate * (accept - self.hmc.target_accept_prob)
            )

        tf.cond(finite, keep, lambda: None)
        return z, accept, finite

    def _m_step(self, x: tf.Tensor, z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            log_joint = tf.reduce_mean(self.log_joint(x, z))
            loss = -log_joint
        grads = tape.gradient(loss, self.variables)
        return log_joint, self.optimizer.apply_if_finite(grads, self.variables, loss)

    def _update(self, batch: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        x, index = batch
        seed = tf.stack([self._seed, tf.cast(self.state.step, tf.int32)])
        z, accept, ok = self._sample_impl(x, index, seed)
        log_joint = tf.reduce_mean(self.log_joint(x, z))
        for _ in range(self.hmc.updates_per_sample):
            # After a skipped update the later ones are skipped too: the step stops as it failed.
            log_joint, ok = tf.cond(
                ok,
                lambda: self._m_step(x, z),
                lambda lj=log_joint: (lj, tf.constant(False)),
            )

        def count() -> None:
            self.state.step.assign_add(1)
            m = batch_size(x)
            self.sums.add(m, log_joint * m, accept * m)

        tf.cond(ok, count, lambda: None)
        return ok

    def sample_posterior(
        self, x: tf.Tensor, index: tf.Tensor, seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """E step only: advance the chains of rows ``index``; returns (z [M, k], mean acceptance,
        kept: False when the move was not finite and the chains were left as they were)."""
        return self._sample(x, tf.convert_to_tensor(index, tf.int32), seed)

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        raise ModelError(
            "MCEM has no recognition model, hence no variational bound to validate with; "
            "train it with valid_data=None and estimate log p(x) instead (models.hmc_estimator)"
        )

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            chains=self.chains,
            log_step_size=self.log_step_size,
            **self.state.items(),
        )


__all__ = ["HMCSettings", "MCEMTrainer", "TRAIN_ACCEPT", "TRAIN_LOG_JOINT"]
