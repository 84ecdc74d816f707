"""Dataset-level summaries of per-point evaluation numbers: mean ± stderr, active units, bits/dim.

    stderr          = std(v, ddof=1) / sqrt(N)                       (over data points)
    active units    = #{j : Cov_x(E_q[z_j | x]) > 0.01}               (Burda et al., 2015, Sec. 5.2)
    bits per dim    = -(log p(x) + D log delta) / (D log 2)

`delta` is the quantisation step of the data: for binary data under a Bernoulli decoder log p(x)
is already a log-probability (delta = 1); for a density over data that was quantised with step
delta (e.g. uint8 / 255 -> delta = 1/255), p(x) delta^D approximates the probability of the bin.
`RunningMoments` accumulates per-dimension mean and variance over batches with Chan et al.'s
pairwise update in float64, so the covariance criterion needs no pass over stored latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACTIVE_UNIT_THRESHOLD = 1e-2


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error over the first axis (stderr 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_and_stderr needs at least one value")
    stderr = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), stderr


class RunningMoments:
    """Streaming per-dimension mean and (population) variance of rows [n, k]."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        n = rows.shape[0]
        if n == 0:
            return
        batch_mean = rows.mean(axis=0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self._m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self._m2 = self._m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        if self._m2 is None:
            raise ValueError("RunningMoments.variance: no rows were added")
        return self._m2 / self.count


def active_units(latent_mean_variance: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent dimensions whose posterior mean varies across data more than ``threshold``."""
    return int(np.sum(np.asarray(latent_mean_variance) > threshold))


def bits_per_dim(mean_log_marginal: float, input_dim: int, quantization_step: float = 1.0) -> float:
    """Negative log-likelihood in bits per input dimension, for data quantised with ``quantization_step``."""
    if input_dim <= 0 or quantization_step <= 0:
        raise ValueError(
            f"bits_per_dim: input_dim={input_dim} and quantization_step={quantization_step} must be > 0"
        )
    log_prob = mean_log_marginal + input_dim * math.log(quantization_step)
    return -log_prob / (input_dim * math.log(2.0))


@dataclass(frozen=True)
class PointEstimates:
    """Per-point log p(x) estimates from AIS or the App. D estimator, each [N], in input order."""

    method: str
    log_marginal: np.ndarray
    stderr: np.ndarray  # per-point Monte-Carlo standard error of the estimate (delta method)
    seconds: float

    @property
    def num_points(self) -> int:
        return int(self.log_marginal.shape[0])

    def summary(self) -> dict[str, float]:
        """Mean over points ± its standard error, keyed like `EvaluationResult.summary()`."""
        mean, stderr = mean_and_stderr(self.log_marginal)
        return {
            "log_marginal_likelihood": mean,
            "log_marginal_likelihood_stderr": stderr,
            "num_points": float(self.num_points),
            "seconds_per_point": self.seconds / max(self.num_points, 1),
        }


__all__ = [
    "PointEstimates",
    "ACTIVE_UNIT_THRESHOLD",
    "RunningMoments",
    "active_units",
    "bits_per_dim",
    "mean_and_stderr",
]
