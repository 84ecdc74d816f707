"""Full variational Bayes over the decoder parameters theta (the paper's App. F).

Instead of a point (MAP) estimate, theta gets a factorized Gaussian posterior and the prior
p(theta) = N(0, s^2 I) (s = 1: the prior behind the paper's weight decay):

    q_psi(theta) = prod_j N(theta_j; mu_j, sigma_j^2),   sigma_j = softplus(rho_j)
    theta        = mu + sigma * zeta,  zeta ~ N(0, I)          (reparameterised, one draw per minibatch)

The bound on log p(X) is E_q(theta)[sum_i L(theta, phi; x_i)] - KL(q(theta) || p(theta)); per
datapoint (the scale used by `models.training`) the minibatch estimator is

    1/M sum_i L~(theta, phi; x_i)  -  KL(q(theta) || p(theta)) / N

with L~ the SGVB estimator B (analytic KL for z) and the Gaussian KL for theta in closed form. The
recognition model q_phi(z|x) stays a point estimate, as in App. F, with the weight-decay prior of
the MAP trainer; theta's prior is in the KL term, so it gets no decay. `FullVBVAE.vae` holds the
encoder and the decoder whose variables *are* the means mu, so the plug-in model at the posterior
mean is an ordinary `VAE` (saveable, exportable).

`FullVBTrainer` is a `models.training.Step`: `fit_full_vb` runs it in the shared epoch loop
(resume check, NaN/Inf guard before each update, early stopping, checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf
import tensorflow_probability as tfp

from models import constants as C
from models.config import ModelConfig, TrainConfig, check_architecture
from models.errors import ConfigError
from models.objectives import elbo
from models.optim import for_training
from models.training import (
    EpochCallback,
    Evaluator,
    LoopState,
    MetricSums,
    TrainResult,
    batch_size,
    check_num_train,
    fingerprint,
    run_epochs,
)
from models.vae import ACTIVATIONS, LOG_VAR_MAX, LOG_VAR_MIN, VAE, soft_clip

tfd = tfp.distributions


def _likelihood_from_outputs(
    kind: str, out: tf.Tensor, log_var_min: float = LOG_VAR_MIN
) -> tfd.Distribution:
    """The decoder head of `VAE.likelihood`, for decoder outputs computed with sampled weights."""
    if kind == "bernoulli":
        base = tfd.Bernoulli(logits=out, dtype=tf.float32)
    elif kind == "continuous_bernoulli":
        base = tfd.ContinuousBernoulli(logits=out)
    else:
        mean_logits, raw_log_var = tf.split(out, 2, axis=-1)
        log_var = soft_clip(raw_log_var, log_var_min, LOG_VAR_MAX)
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
        return _likelihood_from_outputs(self.config.likelihood, h, self.vae.log_var_min)

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
        check_architecture(config, theta="full_vb")  # q(theta) is over dense layers' weights
        self.config, self.initial_std, self.prior_std = config, float(initial_std), float(prior_std)
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


class FullVBTrainer:
    """The `Step` of full VB: per minibatch one draw of theta ~ q(theta), one update of (phi, psi)."""

    def __init__(self, model: FullVBVAE, config: TrainConfig, num_train: int):
        self.model, self.config, self.num_train = model, config, check_num_train(num_train)
        self.variables = list(model.trainable_variables)
        encoder = list(model.vae.encoder.trainable_variables)
        self.optimizer = for_training(config, self.variables, self.num_train, decayed=encoder)
        vb = {"theta": "full_vb", "initial_std": model.initial_std, "prior_std": model.prior_std}
        self.state = LoopState(self.variables, fingerprint(config, model, self.num_train, **vb))
        self.sums = MetricSums((C.TRAIN_ELBO, C.TRAIN_KL_THETA))
        self._evaluator = Evaluator(model.vae, config)  # the plug-in model at the mean of q(theta)
        self._seed = tf.constant(config.seed, tf.int32)
        self.update = tf.function(self._update, jit_compile=config.jit_compile, autograph=False)

    def _update(self, x: tf.Tensor) -> tf.Tensor:
        seed = tf.stack([self._seed, tf.cast(self.state.step, tf.int32)])
        with tf.GradientTape() as tape:
            out = self.model.objective(x, seed, self.num_train, self.config.num_samples)
            loss = -out["bound"]
        grads = tape.gradient(loss, self.variables)
        m = batch_size(x)

        def count() -> None:
            self.state.step.assign_add(1)
            self.sums.add(m, out["bound"] * m, out["kl_theta"] * m)

        return self.optimizer.apply_if_finite(grads, self.variables, loss, then=count)

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        """Plug-in bound at the mean of q(theta) (estimator B, fixed noise), KL, reconstruction."""
        return self._evaluator(data)

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, **self.state.items())


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
    ``checkpoint_dir`` and resumes from the latest one (refusing one written with another
    config). Metrics per epoch: train_elbo (the full per-datapoint bound including -KL(theta)/N),
    train_kl_theta (mean over the epoch's steps), valid_elbo, valid_kl, valid_reconstruction,
    examples_per_second.
    """
    trainer = FullVBTrainer(model, config, num_train)
    return run_epochs(trainer, make_train_data, valid_data, checkpoint_dir, on_epoch_end)


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
