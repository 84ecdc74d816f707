"""Discrete data, honest likelihoods: dequantization, binarization, and the discrete conversion.

Integer-stored data (uint8 values k in 0..n, model input k / n) are discrete: a decoder density on
[0, 1]^D says nothing about the probability of the stored value unless the data are dequantized.
With L = n + 1 levels (256 for 8-bit images, 17 for the 0..16 digits):

    y          = (k + u) / L,   u ~ U[0, 1)^D           (uniform dequantization: y in [k/L, (k+1)/L))
    log P(k)  >= E_u[log p(y)] - D log L                 (Jensen; the bin has volume L^-D)

so a continuous decoder (gaussian, continuous_bernoulli) trains on fresh y each step and every
reported log p(x) or ELBO is `log p(y) + log_prob_offset(D, L)` with log_prob_offset = -D log L: a
(stochastic lower bound on a) log-probability of the stored values, the same kind of number for
every such likelihood. Bits/dim = -log P / (D ln 2).

The Bernoulli decoder instead models binary data: ``binarize="dynamic"`` draws x ~ Bernoulli(k / n)
afresh each epoch for training and evaluates on one fixed (seeded) binarization of the split (the
protocol of Burda et al., 2015); its log p(x) is then a log-probability of those binary values.

TensorFlow is imported by the functions that draw noise only, so the settings checks stay light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from models.config import Binarize, check_binarize

if TYPE_CHECKING:
    import tensorflow as tf

CONTINUOUS_LIKELIHOODS = ("gaussian", "continuous_bernoulli")
MAX_LEVELS = 256  # 8-bit storage
# Stream tag folded into every data-noise seed: apart from the posterior noise [seed, step].
DATA_NOISE_TAG = 0xDA7A
# Seed of the fixed dequantization / binarization of an evaluated split (evaluate, export, gate).
EVAL_DATA_SEED = 20_131_220  # the AEVB paper's arXiv date


def data_levels(storage_dtype: str, scale: float, value_range: tuple[float, float]) -> int | None:
    """L, the number of levels of integer-stored data whose model inputs k * scale fill [0, 1]
    (scale = 1 / n for an integer n <= 255, so L = n + 1); None for continuous data."""
    if not np.issubdtype(np.dtype(storage_dtype), np.integer) or not scale > 0:
        return None
    n = round(1.0 / scale)
    if not 1 <= n < MAX_LEVELS or abs(n * scale - 1.0) > 1e-6:
        return None
    lo, hi = value_range
    return n + 1 if 0.0 <= lo and hi <= 1.0 + 1e-6 else None


def log_prob_offset(input_dim: int, levels: int) -> float:
    """-D log L: turns a log density of y on [0, 1]^D into a log-probability of the L-level value."""
    if input_dim < 1 or levels < 2:
        raise ValueError(f"log_prob_offset: input_dim={input_dim} >= 1 and levels={levels} >= 2")
    return -input_dim * math.log(levels)


def bits_per_dim(log_prob: float | np.ndarray, input_dim: int) -> float | np.ndarray:
    """-log P / (D ln 2): a (discrete) log-probability in nats as bits per dimension."""
    return -np.asarray(log_prob, np.float64) / (input_dim * math.log(2.0))


def noise_seed(seed: int, *path: int | tf.Tensor) -> tf.Tensor:
    """A stateless seed [2] for data noise: [seed, DATA_NOISE_TAG] with each of ``path`` folded in."""
    import tensorflow as tf

    s = tf.constant([int(seed), DATA_NOISE_TAG], tf.int64)
    for p in path:
        s = tf.random.experimental.stateless_fold_in(s, tf.cast(p, tf.int64))
    return s


def dequantize(x: tf.Tensor, levels: int, seed: tf.Tensor) -> tf.Tensor:
    """(k + u) / L with k = x (L - 1) rounded and u ~ U[0, 1) from the stateless ``seed``."""
    import tensorflow as tf

    n = float(levels - 1)
    k = tf.round(x * n)
    u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=x.dtype, alg="philox")
    return (k + u) / float(levels)


def binarize(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """x_bin ~ Bernoulli(x) elementwise (x in [0, 1]) from the stateless ``seed``; same dtype."""
    import tensorflow as tf

    u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=x.dtype, alg="philox")
    return tf.cast(u < x, x.dtype)


@dataclass(frozen=True)
class InputTransform:
    """What a model's inputs go through before the likelihood sees them, and how its log p(x)
    converts to a number about the stored data.

    kind: "none" (inputs as stored), "dequantize" (continuous decoder on L-level data) or
    "binarize" (Bernoulli decoder with train.binarize="dynamic"). ``levels``: L of the data, or None.
    """

    kind: Literal["none", "dequantize", "binarize"] = "none"
    levels: int | None = None

    def apply(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        if self.kind == "dequantize":
            return dequantize(x, self.levels, seed)
        if self.kind == "binarize":
            return binarize(x, seed)
        return x

    def offset(self, input_dim: int) -> float:
        """What to add to a log p(x) / ELBO of the transformed inputs (0 unless dequantized)."""
        return log_prob_offset(input_dim, self.levels) if self.kind == "dequantize" else 0.0

    @property
    def discrete(self) -> bool:
        """True when log p(x) is a log-probability of discrete values (bits/dim make sense)."""
        return self.kind != "none"

    @property
    def score_kind(self) -> str:
        """What kind of number log p(x) is (scores compare only when their kinds are equal); ""
        without a transform: the caller's legacy kind (`tasks.scoring.SCORE_KINDS`)."""
        if self.kind == "dequantize":
            return f"log-probability:{self.levels}-level"
        if self.kind == "binarize":
            return "log-probability:binarized"
        return ""


# Per-point columns and summary keys that are log p(x)'s or bounds on it (shifted by the offset).
LOG_PROB_COLUMNS = ("log_marginal", "elbo_a", "elbo_b", "reconstruction", "is_log_marginal")
LOG_PROB_KEYS = (
    "log_marginal_likelihood",
    "elbo",
    "elbo_a",
    "reconstruction",
    "is_log_marginal_likelihood",
)


def transform_rows(transform: InputTransform, x: np.ndarray, *path: int) -> np.ndarray:
    """x [B, D] float32 through ``transform`` with the fixed seed noise_seed(EVAL_DATA_SEED, *path)
    (e.g. path = (0, batch index)): the same rows, path and batch size give the same draw."""
    import tensorflow as tf

    if transform.kind == "none":
        return x
    seed = noise_seed(EVAL_DATA_SEED, *path)
    return transform.apply(tf.constant(x, tf.float32), seed).numpy()


def convert_per_point(
    per_point: dict[str, np.ndarray], transform: InputTransform, input_dim: int
) -> dict[str, np.ndarray]:
    """Per-point arrays with every log p(x)/ELBO column shifted by the transform's offset."""
    offset = transform.offset(input_dim)
    return {k: v + offset if k in LOG_PROB_COLUMNS else v for k, v in per_point.items()}


def convert_summary(
    summary: dict[str, float], transform: InputTransform, input_dim: int
) -> dict[str, float]:
    """The summary with every log p(x)/ELBO shifted by the offset, and bits/dim of the (discrete)
    log p(x) where it is a log-probability."""
    offset = transform.offset(input_dim)
    out = {k: float(v) + offset if k in LOG_PROB_KEYS else v for k, v in summary.items()}
    out.pop("bits_per_dim", None)
    if transform.discrete:
        out["bits_per_dim"] = float(bits_per_dim(out["log_marginal_likelihood"], input_dim))
    return out


def convert_epoch_metrics(
    metrics: dict[str, float], transform: InputTransform, input_dim: int
) -> dict[str, float]:
    """Training metrics with the ELBO and reconstruction terms shifted by the offset (the KL and
    the rest unchanged): per-epoch numbers about the stored data, as evaluation reports them."""
    offset = transform.offset(input_dim)
    if not offset:
        return dict(metrics)
    ends = ("_elbo", "_reconstruction")
    return {k: v + offset if k.endswith(ends) else v for k, v in metrics.items()}


def input_transform(likelihood: str, binarize_setting: str, levels: int | None) -> InputTransform:
    """The `InputTransform` of a ``likelihood`` decoder trained with ``binarize_setting`` on data
    with ``levels`` levels (None: continuous data, which are never transformed)."""
    check_binarize(binarize_setting, likelihood)
    if binarize_setting == "dynamic":
        return InputTransform("binarize", levels)
    if likelihood in CONTINUOUS_LIKELIHOODS and levels is not None:
        return InputTransform("dequantize", levels)
    return InputTransform("none", levels)


__all__ = [
    "Binarize",
    "EVAL_DATA_SEED",
    "InputTransform",
    "binarize",
    "bits_per_dim",
    "check_binarize",
    "convert_epoch_metrics",
    "convert_per_point",
    "convert_summary",
    "transform_rows",
    "data_levels",
    "dequantize",
    "input_transform",
    "log_prob_offset",
    "noise_seed",
]
