"""Full variational Bayes over the decoder parameters theta (the paper's App. F).

Instead of a point (MAP) estimate, theta gets a factorized Gaussian posterior and the prior
p(theta) = N(0, s^2 I) (s = 1: the prior behind the paper's weight decay):

    q_psi(theta) = prod_j N(theta_j; mu_j, sigma_j^2),   sigma_j = softplus(rho_j)
    theta        = mu + sigma * zeta,  zeta ~ N(0, I)          (reparameterised, one draw per minibatch)

The bound on log p(X) is E_q(theta)[sum_i L(theta, phi; x_i)] - KL(q(theta) || p(theta)); per
datapoint (the scale used by `models.training`) the minibatch estimator is

    1/M sum_i L~(theta, phi; x_i)  -  KL(q(theta) || p(theta)) / N

with L~ the SGVB estimator B (analytic KL for z) and the Gaussian KL for theta in closed form. The
recognition model q_phi(z|x) stays a point estimate, as in App. F. `FullVBVAE.vae` holds the
encoder and the decoder whose variables *are* the means mu, so the plug-in model at the posterior
mean is an ordinary `VAE` (saveable, exportable).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import tensorflow as tf
import tensorflow_probability as tfp

from models import constants as C
from models.config import ModelConfig, TrainConfig
from models.errors import ConfigError, TrainingDivergedError
from models.objectives import elbo
from models.optim import make_optimizer
from models.training import EpochCallback, TrainResult
from models.vae import ACTIVATIONS, LOG_VAR_MAX, LOG_VAR_MIN, VAE, soft_clip

tfd = tfp.distributions


def _likelihood_from_outputs(kind: str, out: tf.Tensor) -> tfd.Distribution:
    """The decoder head of `VAE.likelihood`, for decoder outputs computed with sampled weights."""
    if kind == "bernoulli":
        base = tfd.Bernoulli(logits=out, dtype=tf.float32)
    elif kind == "continuous_bernoulli":
        base = tfd.ContinuousBernoulli(logits=out)
    else:
        mean_logits, raw_log_var = tf.split(out, 2, axis=-1)
        log_var = soft_clip(raw_log_var, LOG_VAR_MIN, LOG_VAR_MAX)
        base = tfd.Normal(loc=tf.sigmoid(mean_logits), scale=tf.exp(0.5 * log_var))
    return tfd.Independent(base, reinterpreted_batch_ndims=1)


class DecoderSample:
    """A VAE-shaped view with fixed decoder weights theta: works with `objectives`, `marginal`."""

    def __init__(self, vae: VAE, weights: list[tuple[tf.Tensor, tf.Tensor]]):
        self.vae, self.weights, self.config = vae, weights, vae.config
        self.posterior, self.posterior_params, self.prior = (
            vae.posterior,
            vae.posterior_params,
            vae.prior,
        )

    def likelihood(self, z: tf.Tensor) -> tfd.Distribution:
        act = ACTIVATIONS[self.config.activation]
        h = z
        for i, (w, b) in enumerate(self.weights):
            h = tf.matmul(h, w) + b
            if i < len(self.weights) - 1:
                h = act(h)
        return _likelihood_from_outputs(self.config.likelihood, h)

    def decode_mean(self, z: tf.Tensor) -> tf.Tensor:
        return self.likelihood(z).mean()


class FullVBVAE(tf.Module):
    """q_phi(z|x) (point estimate) and q_psi(theta) (factorized Gaussian over decoder weights)."""

    def __init__(
        self,
        config: ModelConfig,
        seed: int = 0,
        initial_std: float = 1e-3,
        prior_std: float = 1.0,
        name: str = "full_vb_vae",
        vae: VAE | None = None,
    ):
        """``vae``: train this model's variables (its decoder weights become the means of
        q(theta)) instead of a new ``VAE(config, seed)``."""
        super().__init__(name=name)
        if not initial_std > 0 or not prior_std > 0:
            raise ConfigError(
                f"full_vb initial_std={initial_std!r} and prior_std={prior_std!r} must be > 0"
            )
        self.config, self.prior_std = config, float(prior_std)
        self.vae = VAE(config, seed=seed) if vae is None else vae
        rho0 = math.log(math.expm1(initial_std))  # softplus^{-1}
        self.rho = [
            (
                tf.Variable(tf.fill(layer.w.shape, rho0), name=f"rho_w_{i}"),
                tf.Variable(tf.fill(layer.b.shape, rho0), name=f"rho_b_{i}"),
            )
            for i, layer in enumerate(self.vae.decoder.layers)
        ]

    def _pairs(
        self,
    ) -> list[tuple[tuple[tf.Variable, tf.Variable], tuple[tf.Variable, tf.Variable]]]:
        return [
            ((layer.w, layer.b), rho)
            for layer, rho in zip(self.vae.decoder.layers, self.rho, strict=True)
        ]

    def parameter_std(self) -> list[tf.Tensor]:
        """sigma for every decoder weight and bias, in the order (w_0, b_0, w_1, b_1, ...)."""
        return [tf.math.softplus(r) for rho in self.rho for r in rho]

    def sample_decoder(self, seed: tf.Tensor) -> DecoderSample:
        """theta = mu + sigma * zeta (differentiable in mu and rho); seed is a [2] int tensor."""
        weights = []
        for i, (mean, rho) in enumerate(self._pairs()):
            pair = []
            for j, (m, r) in enumerate(zip(mean, rho, strict=True)):
                # Explicit Philox: the default stateless algorithm is ~30x slower under XLA on CPU.
                zeta = tf.random.stateless_normal(
                    m.shape,
                    seed=tf.random.experimental.stateless_fold_in(seed, 2 * i + j),
                    alg="philox",
                )
                pair.append(m + tf.math.softplus(r) * zeta)
            weights.append((pair[0], pair[1]))
        return DecoderSample(self.vae, weights)

    def mean_decoder(self) -> VAE:
        """The plug-in model at the posterior mean of theta."""
        return self.vae

    def kl_theta(self) -> tf.Tensor:
        """KL(q(theta) || N(0, prior_std^2 I)), closed form, summed over all decoder parameters."""
        s2 = self.prior_std**2
        total = tf.constant(0.0)
        for mean, rho in self._pairs():
            for m, r in zip(mean, rho, strict=True):
                sd = tf.math.softplus(r)
                total += tf.reduce_sum(
                    0.5 * (tf.square(sd) + tf.square(m)) / s2
                    - 0.5
                    - tf.math.log(sd)
                    + 0.5 * math.log(s2)
                )
        return total

    def objective(
        self, x: tf.Tensor, seed: tf.Tensor, num_train: int, num_samples: int = 1
    ) -> dict:
        """Per-datapoint minibatch bound (scalar) and its parts; theta drawn once per call."""
        seed_theta, seed_z = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        bound = elbo(self.sample_decoder(seed_theta), x, seed_z, "B", num_samples)
        kl_theta = self.kl_theta()
        data_term = tf.reduce_mean(bound.elbo)
        return {
            "bound": data_term - kl_theta / float(num_train),
            "data_elbo": data_term,
            "kl": tf.reduce_mean(bound.kl),
            "reconstruction": tf.reduce_mean(bound.reconstruction),
            "kl_theta": kl_theta,
        }


class FullVBTrainer(tf.Module):
    """Optimiser, compiled steps and checkpointable loop state for one `FullVBVAE`."""

    def __init__(self, model: FullVBVAE, config: TrainConfig, num_train: int):
        super().__init__(name="full_vb_trainer")
        self.model, self.config, self.num_train = model, config, int(num_train)
        self.encoder_variables = list(model.vae.encoder.trainable_variables)
        self.params = list(model.trainable_variables)
        self.optimizer = make_optimizer(config.optimizer, self.params, config.learning_rate)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.best = tf.Variable(-math.inf, trainable=False, name="best_valid_elbo")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.best_weights = [tf.Variable(v, trainable=False) for v in self.params]
        self.history = tf.Variable("[]", trainable=False, name="history")  # JSON, for resume
        self._step = tf.function(self._step_impl, jit_compile=config.jit_compile)
        self._eval = tf.function(
            lambda x, s: tf.reduce_sum(elbo(model.vae, x, s, "B", 1).elbo),
            jit_compile=config.jit_compile,
        )

    def _step_impl(self, x: tf.Tensor, seed: tf.Tensor):
        cfg = self.config
        with tf.GradientTape() as tape:
            out = self.model.objective(x, seed, self.num_train, cfg.num_samples)
            loss = -out["bound"]
            if cfg.weight_decay > 0:
                sq = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.encoder_variables])
                loss += 0.5 * cfg.weight_decay * sq / float(self.num_train)
        grads = tape.gradient(loss, self.params)
        self.optimizer.apply(grads, self.params)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return out["bound"], out["kl_theta"], tf.logical_and(finite, tf.math.is_finite(loss))

    def train_epoch(self, data: tf.data.Dataset, epoch: int) -> dict[str, float]:
        total, n, kl_theta, start = 0.0, 0, 0.0, time.perf_counter()
        for x in data:
            step = int(self.step.numpy())
            bound, kl_theta, finite = self._step(x, tf.constant([self.config.seed, step], tf.int32))
            if not bool(finite):
                raise TrainingDivergedError(
                    f"full-VB training diverged: NaN/Inf at epoch {epoch}, global step {step}; "
                    "lower train.learning_rate or check the input scaling",
                    epoch=epoch,
                    step=step,
                )
            self.step.assign_add(1)
            total += float(bound) * int(x.shape[0])
            n += int(x.shape[0])
        return {
            C.TRAIN_ELBO: total / max(n, 1),
            "train_kl_theta": float(kl_theta),
            C.EXAMPLES_PER_SECOND: n / max(time.perf_counter() - start, 1e-9),
        }

    def evaluate(self, data: tf.data.Dataset) -> float:
        """Plug-in bound at the mean of q(theta), estimator B, fixed noise."""
        total, n = 0.0, 0
        for i, x in enumerate(data):
            total += float(self._eval(x, tf.constant([self.config.seed + 7919, i], tf.int32)))
            n += int(x.shape[0])
        return total / max(n, 1)

    def record(self, epoch: int, score: float) -> None:
        if score > float(self.best.numpy()):
            self.best.assign(score)
            self.best_epoch.assign(epoch)
            self.bad_epochs.assign(0)
            for b, v in zip(self.best_weights, self.params, strict=True):
                b.assign(v)
        else:
            self.bad_epochs.assign_add(1)
        self.epoch.assign(epoch)

    def patience_exhausted(self) -> bool:
        return bool(self.config.patience) and int(self.bad_epochs.numpy()) >= self.config.patience


def fit_full_vb(
    model: FullVBVAE,
    make_train_data: Callable[[int], tf.data.Dataset],
    valid_data: tf.data.Dataset | None,
    num_train: int,
    config: TrainConfig,
    checkpoint_dir: str | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train q(theta) and q(z|x) in place, like `models.training.fit` (same arguments and result).

    ``config.weight_decay`` applies to the encoder only (theta's prior lives in the KL term).
    Validation and early stopping use the plug-in ELBO (estimator B) at the posterior mean of
    theta; the best parameters are restored at the end. Checkpoints every epoch into
    ``checkpoint_dir`` and resumes from the latest one. Metrics per epoch: train_elbo (the full
    per-datapoint bound including -KL(theta)/N), train_kl_theta, valid_elbo, examples_per_second.
    """
    trainer = FullVBTrainer(model, config, num_train)
    manager, resumed_from = None, 0
    if checkpoint_dir:
        ckpt = tf.train.Checkpoint(trainer=trainer)
        manager = tf.train.CheckpointManager(ckpt, checkpoint_dir, max_to_keep=2)
        if manager.latest_checkpoint:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            resumed_from = int(trainer.epoch.numpy())
    history = json.loads(trainer.history.numpy().decode())
    epoch = int(trainer.epoch.numpy())
    while epoch < config.epochs and not trainer.patience_exhausted():
        epoch += 1
        metrics = trainer.train_epoch(make_train_data(epoch), epoch)
        if valid_data is not None:
            metrics[C.VALID_ELBO] = trainer.evaluate(valid_data)
        trainer.record(epoch, metrics.get(C.VALID_ELBO, metrics[C.TRAIN_ELBO]))
        metrics["epoch"] = float(epoch)
        history.append(metrics)
        trainer.history.assign(json.dumps(history))
        if manager is not None:
            manager.save(checkpoint_number=epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    for v, b in zip(trainer.params, trainer.best_weights, strict=True):
        v.assign(b)
    return TrainResult(
        epochs_completed=epoch,
        best_epoch=int(trainer.best_epoch.numpy()),
        best_valid_elbo=float(trainer.best.numpy()),
        stopped_early=trainer.patience_exhausted() and epoch < config.epochs,
        resumed_from_epoch=resumed_from,
        history=history,
    )


def fit_vae_full_vb(
    vae: VAE,
    make_train_data: Callable[[int], tf.data.Dataset],
    valid_data: tf.data.Dataset | None,
    num_train: int,
    config: TrainConfig,
    checkpoint_dir: str | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Drop-in for `models.training.fit` (same arguments) that fits ``vae`` by full VB over theta.

    On return ``vae`` holds the posterior means of theta (the plug-in model, saveable as usual).
    q(theta) starts at std 0.01 around the usual initialisation (as in the reproduce report's
    full-VB experiment); the prior is N(0, I).
    """
    if config.estimator != "B":
        raise ConfigError(
            f"full VB over theta uses estimator B; train.estimator={config.estimator!r} is not "
            "supported with it: set train.estimator='B' or train the MAP default"
        )
    model = FullVBVAE(vae.config, initial_std=0.01, vae=vae)
    return fit_full_vb(
        model, make_train_data, valid_data, num_train, config, checkpoint_dir, on_epoch_end
    )


__all__ = ["DecoderSample", "FullVBTrainer", "FullVBVAE", "fit_full_vb", "fit_vae_full_vb"]
