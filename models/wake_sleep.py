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
log p(theta) = -w/2 ||theta||^2 with w = ``config.weight_decay`` (w = 1: the paper's N(0, I)).
"""

from __future__ import annotations

import tensorflow as tf

from models.config import TrainConfig
from models.errors import TrainingDivergedError
from models.objectives import elbo
from models.optim import make_optimizer
from models.vae import VAE


class WakeSleepTrainer:
    """Alternating wake (generative) and sleep (recognition) updates for one `VAE`.

    ``train_step(x, seed)`` does one wake and one sleep update on a [M, D] float32 minibatch and
    returns scalar tensors: ``wake`` (mean log p(x, z) with z ~ q), ``sleep`` (mean log q(z|x) on
    dreams) and ``elbo`` (mean estimator-B bound on x before the update).
    """

    def __init__(self, model: VAE, config: TrainConfig, num_train: int):
        self.model, self.config, self.num_train = model, config, int(num_train)
        self.generative_variables = list(model.decoder.trainable_variables)
        self.recognition_variables = list(model.encoder.trainable_variables)
        self.wake_optimizer = make_optimizer(
            config.optimizer, self.generative_variables, config.learning_rate
        )
        self.sleep_optimizer = make_optimizer(
            config.optimizer, self.recognition_variables, config.learning_rate
        )
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self._wake = tf.function(self._wake_impl, jit_compile=config.jit_compile)
        self._sleep = tf.function(self._sleep_impl, jit_compile=config.jit_compile)
        # Drawing the dreams stays outside XLA: TF's default stateless RNG is ~30x slower under
        # XLA on CPU, and the sleep phase draws M x D Bernoulli/Gaussian variates per step.
        self._dream = tf.function(self.dream)
        self._train = tf.function(self._train_impl)

    def _log_prior_theta(self, variables: list[tf.Variable]) -> tf.Tensor:
        if self.config.weight_decay <= 0:
            return tf.constant(0.0)
        sq = tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
        return -0.5 * self.config.weight_decay * sq / float(self.num_train)

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
            loss = -(wake + self._log_prior_theta(self.generative_variables))
        grads = tape.gradient(loss, self.generative_variables)
        self.wake_optimizer.apply(grads, self.generative_variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return wake, bound, tf.logical_and(finite, tf.math.is_finite(wake))

    def _sleep_impl(self, z: tf.Tensor, x: tf.Tensor):
        with tf.GradientTape() as tape:
            sleep = self.sleep_objective(z, x)
            loss = -(sleep + self._log_prior_theta(self.recognition_variables))
        grads = tape.gradient(loss, self.recognition_variables)
        self.sleep_optimizer.apply(grads, self.recognition_variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return sleep, tf.logical_and(finite, tf.math.is_finite(sleep))

    def wake_update(self, x: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Wake phase only (moves theta): returns (wake objective, ELBO before the update, finite)."""
        return self._wake(x, seed)

    def sleep_update(self, batch_size: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Sleep phase only (moves phi) on ``batch_size`` dreams: returns (sleep objective, finite)."""
        return self._sleep(*self._dream(int(batch_size), seed))

    def _train_impl(self, x: tf.Tensor, seed: tf.Tensor):
        seed_wake, seed_sleep = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        wake, bound, finite_wake = self._wake(x, seed_wake)
        sleep, finite_sleep = self._sleep(*self.dream(x.shape[0], seed_sleep))
        return wake, sleep, bound, tf.logical_and(finite_wake, finite_sleep)

    def train_step(self, x: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """One wake + one sleep update (M dreams for M datapoints); raises on NaN/Inf."""
        wake, sleep, bound, finite = self._train(x, seed)
        if not bool(finite):
            raise TrainingDivergedError(
                f"wake-sleep diverged: NaN/Inf at step {int(self.step.numpy())}; lower "
                "train.learning_rate or check that the inputs suit model.likelihood",
                epoch=0,
                step=int(self.step.numpy()),
            )
        self.step.assign_add(1)
        return {"wake": wake, "sleep": sleep, "elbo": bound}


__all__ = ["WakeSleepTrainer"]
