"""The paper's experiments as pure-TF routines: learning curves, estimator variance, exact checks.

- `train_curve`: train AEVB, wake-sleep or MCEM on a data array for a budget of *training samples
  evaluated* (datapoints entering a parameter update: M per AEVB step, M per wake update, M per
  MCEM weight update, the x-axis of the paper's Figs. 2-3) and record at chosen budgets the average
  lower bound per datapoint (estimator B, L=1, with q(z|x) as the posterior; undefined for MCEM,
  which has no recognition model) on train and test, and optionally an estimate of log p(x).
- `gradient_variance`: trace of the covariance of the SGVB gradient of estimator A vs B at the
  same parameters and minibatch over independent noise draws (Sec. 2.3: B's is typically lower).
- `compare_full_vb_map`: App. F's full VB over theta against the MAP default on held-out data.
- `manifold_grid`, `prior_samples`: the paper's Figs. 4 and 5.

Arrays in, floats and lists out; no I/O, no printing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from models import constants as C
from models.config import ModelConfig, TrainConfig
from models.errors import ConfigError, TrainingDivergedError
from models.full_vb import FullVBVAE, fit_full_vb
from models.hmc_estimator import hmc_log_marginal
from models.marginal import importance_sampled_log_marginal
from models.mcem import TRAIN_LOG_JOINT, HMCSettings, MCEMTrainer
from models.objectives import elbo
from models.training import Step, Trainer, fit, run_epochs
from models.vae import VAE
from models.wake_sleep import TRAIN_WAKE, WakeSleepTrainer

tfd = tfp.distributions

Method = Literal["aevb", "wake_sleep", "mcem"]
METHODS: tuple[str, ...] = ("aevb", "wake_sleep", "mcem")
LogMarginalFn = Callable[[VAE, np.ndarray, int], np.ndarray]  # (model, x [n, D], seed) -> [n]


# The key of each method's own training objective in its epoch metrics.
_OBJECTIVE = {"aevb": C.TRAIN_ELBO, "wake_sleep": TRAIN_WAKE, "mcem": TRAIN_LOG_JOINT}


def make_trainer(
    method: str, model: VAE, config: TrainConfig, num_train: int, hmc: HMCSettings | None = None
) -> Step:
    """The `models.training.Step` of ``method`` for ``model``: "aevb" is the pipeline's own
    `models.training.Trainer` (Algorithm 1); "wake_sleep" and "mcem" are the baselines."""
    if method == "aevb":
        return Trainer(model, config, num_train)
    if method == "wake_sleep":
        return WakeSleepTrainer(model, config, num_train)
    if method == "mcem":
        return MCEMTrainer(model, config, num_train, hmc)
    raise ConfigError(f"method={method!r} is not allowed; choose one of {', '.join(METHODS)}")


class BoundEvaluator:
    """Mean estimator-B bound (L=1) over an array, compiled once per model.

    Fixed noise: seeds [seed + EVAL_SEED_OFFSET, first row of the batch].
    """

    def __init__(self, model: VAE, batch_size: int = 500, seed: int = 0):
        self.batch_size, self.seed = batch_size, seed + C.EVAL_SEED_OFFSET
        self._sum = tf.function(
            lambda x, s: tf.reduce_sum(elbo(model, x, s, "B", 1).elbo), autograph=False
        )

    def __call__(self, x: np.ndarray) -> float:
        total = 0.0
        for i in range(0, len(x), self.batch_size):
            seed = tf.constant([self.seed, i], tf.int32)
            total += float(self._sum(tf.constant(x[i : i + self.batch_size]), seed))
        return total / max(len(x), 1)


@dataclass
class Curve:
    """One learning curve: ``points`` holds a dict per evaluation (see `train_curve`)."""

    method: str
    latent_dim: int
    num_train: int
    points: list[dict[str, float]] = field(default_factory=list)
    rows: dict[str, list[float]] = field(default_factory=dict)  # per-row log p(x) at the last point

    def column(self, key: str) -> list[float]:
        return [p.get(key, math.nan) for p in self.points]


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled full minibatches of row indices (the remainder of each epoch is dropped)."""
    if n < batch_size:
        raise ConfigError(f"train.batch_size={batch_size} exceeds the {n} training rows")
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


def _segment_steps(targets: list[int], per_step: int) -> list[int]:
    """Updates between consecutive budgets: budget t is reached after ceil(t / per_step) updates."""
    ends = [-(-t // per_step) for t in targets] if per_step > 0 else []
    counts = [b - a for a, b in zip([0, *ends], ends, strict=False)]
    if not counts or min(counts) < 1:
        raise ConfigError(
            f"eval_at={targets}: need budgets > 0, each at least one update ({per_step} training "
            "samples) past the previous one"
        )
    return counts


def train_curve(
    method: str,
    x_train: np.ndarray,
    x_test: np.ndarray,
    model_config: ModelConfig,
    train_config: TrainConfig,
    eval_at: Sequence[int],
    *,
    hmc: HMCSettings | None = None,
    log_marginal: LogMarginalFn | None = None,
    log_marginal_rows: int = 100,
    model: VAE | None = None,
) -> tuple[VAE, Curve]:
    """Train ``method`` until max(eval_at) training samples are evaluated; evaluate at each budget.

    x_train, x_test: [N, D] float32 arrays. The stretch up to each budget is one epoch of
    `models.training.run_epochs` (no early stopping; the model ends with its last weights). Each
    point of the curve has ``samples``, ``seconds`` (training wall time so far), ``train_objective``
    (the method's own training objective averaged over the updates since the previous point: the
    SGVB bound, the wake objective log p(x, z), or MCEM's log p(x, z) at the chains),
    ``train_bound``/``test_bound`` (AEVB, wake-sleep) and, with ``log_marginal``,
    ``{train,test}_log_marginal`` (mean) and ``..._se`` (its standard error over rows) on the
    first ``log_marginal_rows`` rows of each set; ``curve.rows`` keeps the per-row estimates of
    the last budget for paired comparisons. Returns (the trained model, the curve).
    """
    targets = sorted(int(t) for t in eval_at)
    cfg = dataclasses.replace(train_config, epochs=max(len(targets), 1), patience=0)
    model = model or VAE(model_config, seed=cfg.seed)
    trainer = make_trainer(method, model, cfg, len(x_train), hmc)
    per_update = (hmc or HMCSettings()).updates_per_sample if method == "mcem" else 1
    per_step = cfg.batch_size * per_update  # training samples evaluated per update
    steps = _segment_steps(targets, per_step)
    batches = _batches(len(x_train), cfg.batch_size, np.random.default_rng(cfg.seed))
    x_all = tf.constant(x_train, tf.float32)

    def segment(k: int):
        for _ in range(steps[k - 1]):
            rows = next(batches)
            x = tf.gather(x_all, rows)
            yield (x, tf.constant(rows, tf.int32)) if method == "mcem" else x

    bound = BoundEvaluator(model) if method != "mcem" else None
    curve = Curve(method, model_config.latent_dim, len(x_train))
    clock = {"seconds": 0.0, "since": 0.0}

    def record(k: int, metrics: dict[str, float]) -> None:
        clock["seconds"] += time.perf_counter() - clock["since"]
        point = {
            "samples": float(sum(steps[:k]) * per_step),
            "seconds": clock["seconds"],
            "train_objective": metrics[_OBJECTIVE[method]],
        }
        if bound is not None:
            point["train_bound"], point["test_bound"] = bound(x_train), bound(x_test)
        if log_marginal is not None:
            for split, x, offset in (("train", x_train, 0), ("test", x_test, 1)):
                rows = np.asarray(log_marginal(model, x[:log_marginal_rows], cfg.seed + offset))
                point[f"{split}_log_marginal"] = float(np.mean(rows))
                point[f"{split}_log_marginal_se"] = float(np.std(rows, ddof=1) / np.sqrt(len(rows)))
                curve.rows[split] = rows.tolist()  # per row, at the latest budget
        curve.points.append(point)
        clock["since"] = time.perf_counter()  # evaluation time is not training time

    clock["since"] = time.perf_counter()
    run_epochs(trainer, segment, on_epoch_end=record, keep_best=False)
    return model, curve


def select_learning_rate(
    method: str,
    x_train: np.ndarray,
    model_config: ModelConfig,
    train_config: TrainConfig,
    candidates: Sequence[float],
    pilot_samples: int,
    hmc: HMCSettings | None = None,
) -> tuple[float, dict[float, float]]:
    """Sec. 5: the step size "chosen from {0.01, 0.02, 0.1} based on performance on the training
    set in the first few iterations". Score: train bound (AEVB, wake-sleep) or, for MCEM, its own
    objective; diverged pilots score -inf. Returns (best learning rate, {rate: score})."""
    scores: dict[float, float] = {}
    for lr in candidates:
        cfg = dataclasses.replace(train_config, learning_rate=float(lr))
        try:
            _, curve = train_curve(
                method, x_train, x_train[:500], model_config, cfg, [pilot_samples], hmc=hmc
            )
            point = curve.points[-1]
            score = point.get("train_bound", point["train_objective"])
        except TrainingDivergedError:
            score = -math.inf
        scores[float(lr)] = score if math.isfinite(score) else -math.inf
    return max(scores, key=scores.get), scores


def hmc_log_marginal_fn(
    num_chains: int = 4, num_burnin: int = 100, num_samples: int = 200, batch_size: int = 100
) -> LogMarginalFn:
    """The paper's App. D estimator (`models.hmc_estimator`) as a `LogMarginalFn`; any model."""

    def estimate(model: VAE, x: np.ndarray, seed: int) -> np.ndarray:
        out = []
        for i in range(0, len(x), batch_size):
            s = tf.constant([seed, i], tf.int32)
            est = hmc_log_marginal(
                model,
                x[i : i + batch_size],
                s,
                num_chains=num_chains,
                num_burnin=num_burnin,
                num_samples=num_samples,
            )
            out.append(est.log_marginal.numpy())
        return np.concatenate(out)

    return estimate


def is_log_marginal_fn(num_samples: int = 1000, batch_size: int = 100) -> LogMarginalFn:
    """Importance sampling with the model's own q(z|x) (`models.marginal`); a stochastic lower bound."""

    def estimate(model: VAE, x: np.ndarray, seed: int) -> np.ndarray:
        out = [
            importance_sampled_log_marginal(
                model,
                tf.constant(x[i : i + batch_size]),
                num_samples,
                tf.constant([seed, i], tf.int32),
            ).numpy()
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(out)

    return estimate


def gradient_variance(
    model: VAE, x: np.ndarray, num_draws: int = 100, seed: int = 0, num_samples: int = 1
) -> dict[str, dict[str, float]]:
    """Trace of the covariance of d/d(params) of the mean bound over ``num_draws`` noise draws.

    Same parameters, same minibatch x [M, D], same noise for A and B (common random numbers).
    Returns {"A"|"B": {"encoder", "decoder", "total": summed per-parameter variance,
    "encoder_snr": |mean gradient|^2 / variance trace of the encoder gradient}}.
    """
    x = tf.constant(x, tf.float32)
    groups = {
        "encoder": list(model.encoder.trainable_variables),
        "decoder": list(model.decoder.trainable_variables),
    }
    result = {}
    for estimator in ("A", "B"):

        def grads(s, estimator=estimator):
            with tf.GradientTape() as tape:
                value = tf.reduce_mean(elbo(model, x, s, estimator, num_samples).elbo)
            g = tape.gradient(value, groups["encoder"] + groups["decoder"])
            flat = [tf.reshape(t, [-1]) for t in g]
            n_enc = len(groups["encoder"])
            return tf.concat(flat[:n_enc], 0), tf.concat(flat[n_enc:], 0)

        fn = tf.function(grads, autograph=False)
        sums = {k: None for k in groups}
        for d in range(num_draws):
            for key, g in zip(groups, fn(tf.constant([seed, d], tf.int32)), strict=True):
                g = g.numpy().astype(np.float64)
                acc = sums[key] or [np.zeros_like(g), np.zeros_like(g)]
                acc[0] += g
                acc[1] += g * g
                sums[key] = acc
        out = {}
        for key, (s1, s2) in sums.items():
            mean = s1 / num_draws
            var = np.maximum(s2 / num_draws - mean**2, 0.0) * num_draws / (num_draws - 1)
            out[key] = float(var.sum())
            if key == "encoder":
                out["encoder_snr"] = float(np.sum(mean**2) / max(var.sum(), 1e-30))
        out["total"] = out["encoder"] + out["decoder"]
        result[estimator] = out
    return result


def _epoch_batches(x: np.ndarray, batch_size: int, seed: int) -> Callable[[int], tf.data.Dataset]:
    def make(epoch: int) -> tf.data.Dataset:
        perm = np.random.default_rng([seed, epoch]).permutation(len(x))
        return tf.data.Dataset.from_tensor_slices(x[perm]).batch(batch_size, drop_remainder=True)

    return make


def compare_full_vb_map(
    x_train: np.ndarray,
    x_valid: np.ndarray,
    x_test: np.ndarray,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    initial_std: float = 0.01,
    num_importance: int = 500,
    num_theta: int = 8,
) -> dict[str, dict[str, float]]:
    """Train the MAP default (`models.training.fit`) and full VB (`fit_full_vb`) alike; compare.

    Per method and split ("train", "test"): ``elbo`` (plug-in: MAP theta, or the posterior mean
    of q(theta)) and ``log_marginal`` (IS with K=num_importance at that theta); for full VB also
    ``predictive_log_marginal`` = log 1/S sum_s p^(x|theta_s), theta_s ~ q(theta), S=num_theta
    (each p^ an IS estimate: a stochastic lower bound on the posterior predictive).
    """
    cfg, seed = train_config, train_config.seed
    valid = tf.data.Dataset.from_tensor_slices(x_valid).batch(500)
    make = _epoch_batches(x_train, cfg.batch_size, seed)
    map_model = VAE(model_config, seed=seed)
    map_fit = fit(map_model, make, valid, len(x_train), cfg)
    vb = FullVBVAE(model_config, seed=seed, initial_std=initial_std)
    vb_fit = fit_full_vb(vb, make, valid, len(x_train), cfg)
    is_fn = is_log_marginal_fn(num_importance)
    out: dict[str, dict[str, float]] = {}
    for name, model, result in (("map", map_model, map_fit), ("full_vb", vb.vae, vb_fit)):
        row = {"epochs": float(result.epochs_completed), "best_epoch": float(result.best_epoch)}
        for split, x in (("train", x_train[: len(x_test)]), ("test", x_test)):
            row[f"{split}_elbo"] = BoundEvaluator(model)(x)
            row[f"{split}_log_marginal"] = float(np.mean(is_fn(model, x, seed + 1)))
        out[name] = row
    for split, x in (("train", x_train[: len(x_test)]), ("test", x_test)):
        per_theta = [
            is_fn(vb.sample_decoder(tf.constant([seed + 2, s], tf.int32)), x, seed + 3 + s)
            for s in range(num_theta)
        ]
        log_pred = tf.reduce_logsumexp(np.stack(per_theta), axis=0) - math.log(num_theta)
        out["full_vb"][f"{split}_predictive_log_marginal"] = float(np.mean(log_pred))
    out["full_vb"]["median_theta_std"] = float(
        np.median(np.concatenate([s.numpy().ravel() for s in vb.parameter_std()]))
    )
    return out


def manifold_grid(model: VAE, points: int = 20, edge: float = 0.05) -> np.ndarray:
    """Fig. 4: E[x|z] over a 2-D grid, z = inverse Gaussian CDF of a linear grid on [edge, 1-edge]^2.

    Returns [points, points, D]; row i runs along z_1 (top to bottom), column j along z_2.
    """
    if model.config.latent_dim != 2:
        raise ConfigError(
            f"manifold_grid needs latent_dim 2, the model has {model.config.latent_dim}"
        )
    u = np.linspace(edge, 1.0 - edge, points, dtype=np.float32)
    z1 = tfd.Normal(0.0, 1.0).quantile(u).numpy()
    grid = np.stack(np.meshgrid(z1, z1, indexing="ij"), -1).reshape(-1, 2)
    return model.decode_mean(tf.constant(grid)).numpy().reshape(points, points, -1)


def prior_samples(model: VAE, n: int, seed: int = 0) -> np.ndarray:
    """Fig. 5: E[x|z] for n draws z ~ p(z), shape [n, D] (means, as the paper shows)."""
    z = model.prior().sample(n, seed=tf.constant([seed, 0], tf.int32))
    return model.decode_mean(z).numpy()


__all__ = [
    "BoundEvaluator",
    "Curve",
    "METHODS",
    "Method",
    "compare_full_vb_map",
    "gradient_variance",
    "hmc_log_marginal_fn",
    "is_log_marginal_fn",
    "make_trainer",
    "manifold_grid",
    "prior_samples",
    "select_learning_rate",
    "train_curve",
]
