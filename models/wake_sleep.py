"""The wake-sleep algorithm (Hinton et al., 1995): the paper's on-line baseline, on AEVB's networks.

Same recognition model q_phi(z|x) and generative model p_theta(x|z) p(z) as `models.vae.VAE`;
only the learning rule differs. Per minibatch of M datapoints:

    wake:   z_i ~ q_phi(z|x_i)  (no gradient through the sample)
            theta <- theta + step * grad_theta 1/M sum_i [log p_theta(x_i|z_i)] + log p(theta)/N
    sleep:  z_j ~ p(z),  x_j ~ p_theta(x|z_j)   ("dreams", j = 1..M)
            phi   <- phi   + step * grad_phi   1/M sum_j [log q_phi(z_j|x_j)]   + log p(phi)/N

Wake-sleep optimises no single objective (the sleep phase minimises KL(p||q) rather than the
KL(q||p) of the variational bound), so progress is measured exactly as for AEVB: with the SGVB
lower bound (estimator B) using q_phi as the approximate posterior, as in the paper's Fig. 2.
log p(theta) = -w/2 ||theta||^2 with w = ``config.weight_decay`` (w = 1: the paper's N(0, I)), and
likewise for phi; both enter as the optimisers' decay w/N (`models.optim.for_training`).
"""

from __future__ import annotations

import tensorflow as tf

from models import constants as C
from models.config import TrainConfig
from models.objectives import elbo
from models.optim import for_training
from models.training import (
    Evaluator,
    LoopState,
    MetricSums,
    batch_size,
    check_num_train,
    fingerprint,
)
from models.vae import VAE

TRAIN_WAKE = "train_wake"  # mean log p(x, z), z ~ q(z|x): the wake phase's objective
TRAIN_SLEEP = "train_sleep"  # mean log q(z|x) on dreams: the sleep phase's objective


class WakeSleepTrainer:
    """Alternating wake (generative) and sleep (recognition) updates for one `VAE`: a `Step`.

    ``update(x)`` does one wake and one sleep update on a [M, D] float32 minibatch with the seed
    [train.seed, step] and returns whether both were applied. Each phase is its own guarded
    update: a non-finite wake phase changes nothing and skips the sleep phase; a non-finite sleep
    phase keeps that step's wake update. The epoch metrics are ``train_wake``, ``train_sleep`` and
    ``train_elbo`` (the estimator-B bound on x before the update).
    """

    def __init__(self, model: VAE, config: TrainConfig, num_train: int):
        self.model, self.config, self.num_train = model, config, check_num_train(num_train)
        self.generative_variables = list(model.decoder.trainable_variables)
        self.recognition_variables = list(model.encoder.trainable_variables)
        # Both phases carry the prior -w/2 ||.||^2 / N (decay w/N) on their own parameters.
        self.wake_optimizer = for_training(config, self.generative_variables, self.num_train)
        self.sleep_optimizer = for_training(config, self.recognition_variables, self.num_train)
        model_fp = fingerprint(config, model, self.num_train, method="wake_sleep")
        self.state = LoopState(list(model.trainable_variables), model_fp)
        self.sums = MetricSums((TRAIN_WAKE, TRAIN_SLEEP, C.TRAIN_ELBO))
        self._evaluator = Evaluator(model, config)
        self._seed = tf.constant(config.seed, tf.int32)
        self._wake = tf.function(self._wake_impl, jit_compile=config.jit_compile, autograph=False)
        self._sleep = tf.function(self._sleep_impl, jit_compile=config.jit_compile, autograph=False)
        # Drawing the dreams stays outside XLA: TF's default stateless RNG is ~30x slower under
        # XLA on CPU, and the sleep phase draws M x D Bernoulli/Gaussian variates per step.
        self._dream = tf.function(self.dream, autograph=False)
        self.update = tf.function(self._update, autograph=False)

    def wake_objective(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Mean over the batch of log p_theta(x|z) + log p(z), z ~ q(z|x) held fixed. Shape []."""
        z = tf.stop_gradient(self.model.posterior(x).sample(seed=seed))
        return tf.reduce_mean(self.model.likelihood(z).log_prob(x) + self.model.prior().log_prob(z))

    def dream(self, batch_size: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``batch_size`` fantasies (z, x) ~ p(z) p_theta(x|z): ([M, k], [M, D]), no gradient."""
        seed_z, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        z = self.model.prior().sample(batch_size, seed=seed_z)
        return z, tf.stop_gradient(self.model.likelihood(z).sample(seed=seed_x))

    def sleep_objective(self, z: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        """Mean of log q_phi(z|x) over dreams (z, x). Shape []."""
        return tf.reduce_mean(self.model.posterior(x).log_prob(z))

    def _wake_impl(self, x: tf.Tensor, seed: tf.Tensor):
        seed_wake, seed_eval = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        bound = tf.reduce_mean(elbo(self.model, x, seed_eval, "B", 1).elbo)
        with tf.GradientTape() as tape:
            wake = self.wake_objective(x, seed_wake)
            loss = -wake
        grads = tape.gradient(loss, self.generative_variables)
        applied = self.wake_optimizer.apply_if_finite(grads, self.generative_variables, loss)
        return wake, bound, applied

    def _sleep_impl(self, z: tf.Tensor, x: tf.Tensor):
        with tf.GradientTape() as tape:
            sleep = self.sleep_objective(z, x)
            loss = -sleep
        grads = tape.gradient(loss, self.recognition_variables)
        return sleep, self.sleep_optimizer.apply_if_finite(grads, self.recognition_variables, loss)

    def wake_update(self, x: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Wake phase only (moves theta): returns (wake objective, ELBO before, applied)."""
        return self._wake(x, seed)

    def sleep_update(self, batch_size: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Sleep phase only (moves phi) on ``batch_size`` dreams: returns (sleep objective, applied)."""
        return self._sleep(*self._dream(int(batch_size), seed))

    def _update(self, x: tf.Tensor) -> tf.Tensor:
        seed = tf.stack([self._seed, tf.cast(self.state.step, tf.int32)])
        seed_wake, seed_sleep = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        wake, bound, woke = self._wake(x, seed_wake)

        def sleep_phase():
            return self._sleep(*self.dream(x.shape[0], seed_sleep))

        sleep, slept = tf.cond(woke, sleep_phase, lambda: (tf.constant(0.0), tf.constant(False)))

        def count() -> None:
            self.state.step.assign_add(1)
            m = batch_size(x)
            self.sums.add(m, wake * m, sleep * m, bound * m)

        tf.cond(slept, count, lambda: None)
        return slept

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        """Estimator-B bound with q_phi as the approximate posterior (as for AEVB)."""
        return self._evaluator(data)

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            model=self.model,
            wake_optimizer=self.wake_optimizer,
            sleep_optimizer=self.sleep_optimizer,
            **self.state.items(),
        )


__all__ = ["TRAIN_SLEEP", "TRAIN_WAKE", "WakeSleepTrainer"]
