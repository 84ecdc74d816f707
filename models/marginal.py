"""Importance-sampled estimates of the marginal likelihood log p(x), and whole-dataset evaluation.

    log w_k   = log p(x|z_k) + log p(z_k) - log q(z_k|x),    z_k ~ q(z|x),  k = 1..K
    log p(x) ~= log 1/K sum_k w_k                             (IWAE protocol: K = 5000)

This is a *stochastic lower bound*: by Jensen its expectation is <= log p(x), and it rises towards
log p(x) as K grows (Burda et al., 2015). It is exact, with zero variance, when q is the true
posterior. The K samples are drawn in chunks and combined with a streaming log-sum-exp, so memory is
O(batch * chunk) for any K. From the same K weights we also get, per point, estimator A of the
ELBO (mean log w), the reconstruction term (mean log p(x|z)), estimator B (reconstruction minus the
analytic KL) and the effective sample size ESS = (sum w)^2 / sum w^2, a diagnostic of how well q
covers the posterior (ESS << K: the estimate is dominated by a few samples and likely too low).
All log weights come from `models.objectives.log_weights`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from models import metrics
from models.errors import ConfigError, DatasetError
from models.objectives import log_weights

tfd = tfp.distributions

PosteriorFn = Callable[[tf.Tensor], tfd.Distribution]
ProgressFn = Callable[[int], None]

# Rows (samples x data points) per compiled chunk step. bench/eval_throughput.py --sweep found
# throughput flat from 2,500 to 20,000 rows at the paper architecture; 5,000 keeps a step's
# [rows, D] activations around 16 MB, so memory stays small at any K and any dataset size.
TARGET_CHUNK_ROWS = 5000


class ChunkStats(NamedTuple):
    """Sufficient statistics of a set of log weights, per data point: each [batch]."""

    log_sum_w: tf.Tensor  # log sum_k w_k
    log_sum_w2: tf.Tensor  # log sum_k w_k^2
    sum_log_w: tf.Tensor  # sum_k log w_k
    sum_log_likelihood: tf.Tensor  # sum_k log p(x|z_k)


class PhiloxSampledNormal:
    """A diagonal Gaussian q(z|x) that draws z = loc + scale * eps with eps from the Philox RNG.

    Same reparameterisation and density as the wrapped `tfd.MultivariateNormalDiag`; only the bit
    generator is pinned. Inside XLA, TF's default stateless RNG (ThreeFry on CPU) is ~30x slower
    than Philox and cost as much as the whole decoder. (XLA and plain TF still turn the Philox bits
    into different normals, so compiled and eager runs differ sample by sample, not in
    distribution.) Duck-types the two methods `log_weights` uses.
    """

    def __init__(self, q: tfd.MultivariateNormalDiag):
        self._q = q
        self.loc, self.scale = q.loc, q.scale.diag

    def sample(self, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
        shape = tf.concat([[num_samples], tf.shape(self.loc)], axis=0)
        eps = tf.random.stateless_normal(shape, seed=seed, dtype=self.loc.dtype, alg="philox")
        return self.loc + self.scale * eps  # [S, B, k]

    def log_prob(self, z: tf.Tensor) -> tf.Tensor:
        return self._q.log_prob(z)


def philox_sampled(q: tfd.Distribution):
    """Wrap a diagonal-Gaussian posterior in `PhiloxSampledNormal`; leave any other q unchanged."""
    return PhiloxSampledNormal(q) if isinstance(q, tfd.MultivariateNormalDiag) else q


def chunk_stats(
    model,
    x: tf.Tensor,
    num_samples: int,
    seed: tf.Tensor,
    posterior: tfd.Distribution | None = None,
) -> ChunkStats:
    """Statistics of ``num_samples`` log weights per row of x [batch, D]; seed: [2] int tensor."""
    lw, _ = log_weights(model, x, num_samples, seed, posterior=posterior)
    w = lw.log_w  # [S, B]
    return ChunkStats(
        tf.reduce_logsumexp(w, axis=0),
        tf.reduce_logsumexp(2.0 * w, axis=0),
        tf.reduce_sum(w, axis=0),
        tf.reduce_sum(lw.log_likelihood, axis=0),
    )


def combine(a: ChunkStats, b: ChunkStats) -> ChunkStats:
    """Statistics of the union of two disjoint sample sets (streaming log-sum-exp)."""

    def lse(u, v):
        return tf.reduce_logsumexp(tf.stack([u, v]), axis=0)

    return ChunkStats(
        lse(a.log_sum_w, b.log_sum_w),
        lse(a.log_sum_w2, b.log_sum_w2),
        a.sum_log_w + b.sum_log_w,
        a.sum_log_likelihood + b.sum_log_likelihood,
    )


def chunk_sizes(num_samples: int, chunk_size: int) -> list[int]:
    """[chunk_size, ..., remainder] summing to num_samples."""
    if num_samples < 1 or chunk_size < 1:
        raise ConfigError(
            f"num_samples={num_samples} and chunk_size={chunk_size} must both be >= 1"
        )
    full, rest = divmod(num_samples, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def accumulate(
    step: Callable[[tf.Tensor, int, tf.Tensor], ChunkStats],
    x: tf.Tensor,
    num_samples: int,
    seed: tf.Tensor,
    chunk_size: int,
) -> ChunkStats:
    """Run ``step(x, n, chunk_seed)`` over chunks; chunk i uses stateless_fold_in(seed, i).

    Chunk statistics are combined in float64: sums of K log weights of order -100 would lose
    ~1e-3 nats of the per-point mean in float32 at K = 5000.
    """
    total = None
    for i, n in enumerate(chunk_sizes(num_samples, chunk_size)):
        chunk = step(x, n, tf.random.experimental.stateless_fold_in(seed, i))
        stats = ChunkStats(*(tf.cast(t, tf.float64) for t in chunk))
        total = stats if total is None else combine(total, stats)
    return total


def importance_sampled_log_marginal(
    model,
    x: tf.Tensor,
    num_samples: int,
    seed: tf.Tensor,
    chunk_size: int = 500,
    posterior: tfd.Distribution | None = None,
) -> tf.Tensor:
    """Per-datapoint IS estimate of log p(x), shape [batch]. x: [batch, D]; seed: [2] int tensor.

    ``posterior`` overrides q(z|x) (default ``model.posterior(x)``). A stochastic lower bound.
    """
    q = philox_sampled(model.posterior(x) if posterior is None else posterior)
    stats = accumulate(
        lambda xb, n, s: chunk_stats(model, xb, n, s, posterior=q),
        x,
        num_samples,
        tf.convert_to_tensor(seed),
        chunk_size,
    )
    return tf.cast(stats.log_sum_w - math.log(num_samples), model.prior().dtype)


def elbo_from_noise(
    model, x: tf.Tensor, mean: tf.Tensor, std: tf.Tensor, eps: tf.Tensor
) -> tf.Tensor:
    """Estimator B of the ELBO per row of x [B, D], given q(z|x) = N(mean, diag(std^2)) ([B, k])
    and the standard-normal noise eps [L, B, k]: mean_l log p(x | mean + std * eps_l) - KL(q || p).

    With the noise drawn by the caller (e.g. one seeded stream per file) the result does not depend
    on how rows are batched. Returns [B] in the prior's dtype.
    """
    q = tfd.MultivariateNormalDiag(loc=mean, scale_diag=std)
    log_likelihood = model.likelihood(mean + std * eps).log_prob(x)  # [L, B]
    return tf.reduce_mean(log_likelihood, axis=0) - tfd.kl_divergence(q, model.prior())


@dataclass(frozen=True)
class EvaluationResult:
    """Per-point estimates (each [N], in input order) and dataset-level numbers."""

    log_marginal: np.ndarray  # IS estimate of log p(x) with K samples (stochastic lower bound)
    elbo_a: np.ndarray  # estimator A with L = K: mean_k log w_k
    elbo_b: np.ndarray  # estimator B with L = K: reconstruction - analytic KL
    kl: np.ndarray  # KL(q(z|x) || p(z)), analytic
    reconstruction: np.ndarray  # mean_k log p(x|z_k)
    ess: np.ndarray  # effective sample size of the K importance weights, in [1, K]
    latent_mean_variance: np.ndarray  # [latent_dim] Var_x(E_q[z|x]), for active units
    num_samples: int
    input_dim: int
    bits_per_dim: float | None
    seconds: float

    @property
    def num_points(self) -> int:
        return int(self.log_marginal.shape[0])

    @property
    def log_marginal_stderr(self) -> np.ndarray:
        """Per-point delta-method standard error of the IS estimate, sqrt(1/ESS - 1/K), [N].

        Itself estimated from the K weights, so it is optimistic when q misses posterior mass.
        """
        return np.sqrt(np.maximum(1.0 / self.ess - 1.0 / self.num_samples, 0.0))

    @property
    def active_units(self) -> int:
        return metrics.active_units(self.latent_mean_variance)

    def summary(self) -> dict[str, float]:
        """Dataset numbers keyed by quantity (`metric_key(split, quantity)` makes metric names)."""
        lml, lml_se = metrics.mean_and_stderr(self.log_marginal)
        elbo_b, elbo_b_se = metrics.mean_and_stderr(self.elbo_b)
        out = {
            "log_marginal_likelihood": lml,
            "log_marginal_likelihood_stderr": lml_se,
            "elbo": elbo_b,
            "elbo_stderr": elbo_b_se,
            "elbo_a": float(np.mean(self.elbo_a)),
            "kl": float(np.mean(self.kl)),
            "reconstruction": float(np.mean(self.reconstruction)),
            "active_units": float(self.active_units),
            "importance_ess_fraction": float(np.mean(self.ess) / self.num_samples),
            "num_points": float(self.num_points),
            "num_importance_samples": float(self.num_samples),
            "importance_samples_per_second": self.num_points
            * self.num_samples
            / max(self.seconds, 1e-9),
        }
        if self.bits_per_dim is not None:
            out["bits_per_dim"] = self.bits_per_dim
        return out


class DatasetEvaluator:
    """Compiled per-chunk and per-batch steps bound to one model (build once, reuse across batches)."""

    def __init__(self, model, posterior_fn: PosteriorFn | None = None, jit_compile: bool = True):
        self.model = model
        self.posterior_fn = posterior_fn or model.posterior
        self._chunk = tf.function(self._chunk_impl, jit_compile=jit_compile, autograph=False)
        self._encode = tf.function(self._encode_impl, jit_compile=jit_compile, autograph=False)

    def _chunk_impl(self, x: tf.Tensor, num_samples: int, seed: tf.Tensor) -> ChunkStats:
        q = philox_sampled(self.posterior_fn(x))
        return chunk_stats(self.model, x, num_samples, seed, posterior=q)

    def _encode_impl(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        q = self.posterior_fn(x)
        return tfd.kl_divergence(q, self.model.prior()), q.mean()

    def evaluate_batch(
        self, x: tf.Tensor, num_samples: int, seed: tf.Tensor, chunk_size: int
    ) -> dict[str, np.ndarray]:
        """Per-point numbers for one batch x [B, D] (see `EvaluationResult` for the keys)."""
        stats = accumulate(self._chunk, x, num_samples, seed, chunk_size)
        kl, z_mean = self._encode(x)
        kl = tf.cast(kl, tf.float64)
        k = float(num_samples)
        reconstruction = stats.sum_log_likelihood / k
        return {
            "log_marginal": (stats.log_sum_w - math.log(k)).numpy(),
            "elbo_a": (stats.sum_log_w / k).numpy(),
            "elbo_b": (reconstruction - kl).numpy(),
            "kl": kl.numpy(),
            "reconstruction": reconstruction.numpy(),
            "ess": tf.exp(2.0 * stats.log_sum_w - stats.log_sum_w2).numpy(),
            "z_mean": z_mean.numpy(),
        }


def _as_seed(seed: int | tf.Tensor) -> tf.Tensor:
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    return tf.convert_to_tensor(seed)


def _bits_per_dim(
    model,
    log_marginal_mean: float,
    input_dim: int,
    all_binary: bool,
    quantization_step: float | None,
) -> float | None:
    """Bits/dim where it means something: Bernoulli on {0,1} data, or a density on quantised data."""
    likelihood = getattr(getattr(model, "config", None), "likelihood", None)
    if likelihood == "bernoulli":
        return metrics.bits_per_dim(log_marginal_mean, input_dim) if all_binary else None
    if quantization_step is not None:
        return metrics.bits_per_dim(log_marginal_mean, input_dim, quantization_step)
    return None


def evaluate_dataset(
    model,
    batches: Iterable[tf.Tensor | np.ndarray],
    num_samples: int = 5000,
    seed: int | tf.Tensor = 0,
    chunk_size: int | None = None,
    progress: ProgressFn | None = None,
    posterior_fn: PosteriorFn | None = None,
    quantization_step: float | None = None,
    jit_compile: bool = True,
) -> EvaluationResult:
    """Evaluate every row of ``batches`` ([B, D] each, e.g. a tf.data.Dataset) with K importance samples.

    Batch i uses seed stateless_fold_in(seed, i) and its chunks fold in the chunk index, so results
    are reproducible for a fixed seed, batch size and chunk size. ``chunk_size`` defaults to about
    TARGET_CHUNK_ROWS / B samples per step. ``progress(done_rows)`` is called after each batch.
    ``quantization_step`` (e.g. 1/255 for uint8 images) enables bits/dim for continuous decoders.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples} must be >= 1 (the IWAE protocol uses 5000)")
    evaluator = DatasetEvaluator(model, posterior_fn, jit_compile)
    base_seed = _as_seed(seed)
    parts: dict[str, list[np.ndarray]] = {}
    moments = metrics.RunningMoments()
    all_binary, done, dtype = True, 0, model.prior().dtype
    start = time.perf_counter()
    for i, xb in enumerate(batches):
        x = tf.cast(tf.convert_to_tensor(xb), dtype)
        rows = int(x.shape[0])
        if rows == 0:
            continue
        chunk = chunk_size or max(1, min(num_samples, TARGET_CHUNK_ROWS // rows))
        batch_seed = tf.random.experimental.stateless_fold_in(base_seed, i)
        out = evaluator.evaluate_batch(x, num_samples, batch_seed, chunk)
        moments.update(out.pop("z_mean"))
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
        all_binary = all_binary and bool(
            tf.reduce_all(tf.logical_or(tf.equal(x, 0.0), tf.equal(x, 1.0)))
        )
        done += rows
        if progress is not None:
            progress(done)
    if done == 0:
        raise DatasetError(
            "evaluate_dataset: the batches held no rows; check the dataset split is not empty"
        )
    seconds = time.perf_counter() - start
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    input_dim = int(x.shape[-1])
    bpd = _bits_per_dim(
        model, float(np.mean(arrays["log_marginal"])), input_dim, all_binary, quantization_step
    )
    return EvaluationResult(
        **arrays,
        latent_mean_variance=moments.variance,
        num_samples=num_samples,
        input_dim=input_dim,
        bits_per_dim=bpd,
        seconds=seconds,
    )


__all__ = [
    "ChunkStats",
    "DatasetEvaluator",
    "PhiloxSampledNormal",
    "EvaluationResult",
    "TARGET_CHUNK_ROWS",
    "chunk_stats",
    "combine",
    "elbo_from_noise",
    "evaluate_dataset",
    "importance_sampled_log_marginal",
    "philox_sampled",
]
