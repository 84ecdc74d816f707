"""Degeneracy checks of the reproduce figures: small pure functions on arrays and on the measured
statistics that the experiments store in their results.

A figure can look like a result while showing nothing: a latent axis the encoder never uses, a
Gaussian decoder whose variance sits on its clip floor, samples whose intensity is far from the
data's (noise, inverted images), a manifold whose cells are all the same picture, a "curve" of one
or two budgets. The measures below are numbers with closed forms; `figure_flags` turns the stored
numbers into one sentence per problem, keyed by the figure's file name, and the report prints them
as a "Flagged" note beside the figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

KL_ACTIVE_NATS = 0.01  # an axis whose mean KL(q(z_k|x) || N(0, 1)) is below this carries nothing
FLOOR_MARGIN = 1.5  # a decoder std within 1.5x its clip floor counts as "at the floor"
FLOOR_SHARE = 0.5  # flagged when more than half of all decoder stds sit at the floor
INTENSITY_TOLERANCE = 0.5  # |mean(samples) - mean(data)| over min(mean, 1 - mean) of the data
SIMILARITY_MAX = 0.95  # manifold cells correlating more than this with their mean are "the same"
MIN_BUDGETS = 4  # a learning curve needs at least this many evaluated budgets
_METHODS = {"aevb": "AEVB", "wake_sleep": "wake-sleep", "mcem": "MCEM"}


def axis_kl(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Mean over rows of KL(N(mean, std^2) || N(0, 1)) per latent axis: [N, K] -> [K] (nats).

    Closed form 0.5 (m^2 + s^2 - 1 - ln s^2); 0 exactly when q(z_k|x) is the prior for every row.
    """
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return np.mean(0.5 * (m**2 + s**2 - 1.0 - 2.0 * np.log(s)), axis=0)


def active_axes(mean: np.ndarray, std: np.ndarray, threshold: float = KL_ACTIVE_NATS) -> int:
    """How many latent axes carry information: mean KL per axis above ``threshold`` nats."""
    return int(np.sum(axis_kl(mean, std) > threshold))


def floor_share(std: np.ndarray, floor: float, margin: float = FLOOR_MARGIN) -> float:
    """Share of decoder stds at most ``margin`` x ``floor`` (the std's clip floor)."""
    s = np.asarray(std, np.float64).ravel()
    return float(np.mean(s <= margin * floor)) if s.size else math.nan


def intensity_gap(samples: np.ndarray, data: np.ndarray) -> float:
    """How far the mean sample intensity is from the data's, in units of the data mean's headroom:
    |mean(samples) - mean(data)| / min(mean(data), 1 - mean(data)), intensities in [0, 1].

    0 for samples with the data's mean; inverted binary digits (mean 1 - m) score (1 - 2m) / m.
    """
    m_data, m_samples = float(np.mean(data)), float(np.mean(samples))
    room = min(m_data, 1.0 - m_data)
    return abs(m_samples - m_data) / room if room > 0 else math.inf


def cell_similarity(cells: np.ndarray) -> float:
    """Mean Pearson correlation of each cell of a grid [C, D] with the grid's mean cell.

    1 when every cell is the same picture up to brightness and contrast (and for flat cells, which
    show no shape at all); two alternating orthogonal patterns of equal norm give 1/sqrt(2).
    """
    v = np.asarray(cells, np.float64).reshape(len(cells), -1)
    centred = v - v.mean(axis=1, keepdims=True)
    ref = centred.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1) * np.linalg.norm(ref)
    scale = 1e-9 * (1.0 + float(np.abs(v).max()))
    corr = np.where(norms > scale**2, centred @ ref / np.maximum(norms, scale**2), 1.0)
    return float(np.mean(corr))


def _axes_flag(stats: dict, what: str) -> list[str]:
    k, active = stats.get("latent_dim"), stats.get("active_axes")
    if k is None or active is None or active >= k:
        return []
    return [
        f"{what} uses {active} of its {k} latent axes (mean KL per axis > {KL_ACTIVE_NATS} nats "
        f"on the test rows); the other {k - active} stay at the prior and shape nothing in it"
    ]


def _budget_flag(curves: Sequence[dict], figure: str) -> list[str]:
    counts = {len(c["points"]) for c in curves}
    if not counts or min(counts) >= MIN_BUDGETS:
        return []
    return [
        f"{figure} has {min(counts)} evaluated budget(s) per curve (fewer than {MIN_BUDGETS}): "
        "too few points to show a learning curve"
    ]


def _curve_flags(curves: Sequence[dict], figure: str) -> list[str]:
    flags = _budget_flag(curves, figure)
    for c in curves:
        method = _METHODS.get(c["method"], c["method"])
        label = f"the {c['latent_dim']}-D {method} model (N = {c['num_train']})"
        flags += _axes_flag(c, label)
    return flags


def _manifold_flags(name: str, r: dict) -> list[str]:
    flags = _axes_flag(r, f"the {name} manifold model")
    similarity = r.get("cell_similarity")
    if similarity is not None and similarity > SIMILARITY_MAX:
        flags.append(
            f"its cells are nearly identical: mean correlation {similarity:.3f} of each cell with "
            f"the grid's mean cell (flagged above {SIMILARITY_MAX})"
        )
    at_floor = r.get("decoder_std_floor_share")
    if at_floor is not None and at_floor > FLOOR_SHARE:
        flags.append(
            f"collapsed Gaussian decoder variance: {at_floor:.0%} of the decoder stds at the test "
            f"rows' codes are within {FLOOR_MARGIN}x the clip floor {r['decoder_std_floor']:.4f} (median "
            f"{r['decoder_std_median']:.4f}); its log-densities are not meaningful"
        )
    return flags


def _samples_flags(samples: dict) -> list[str]:
    flags = []
    for k, r in samples.items():
        if r["intensity_gap"] > INTENSITY_TOLERANCE:
            flags.append(
                f"{k}-D samples: mean intensity {r['sample_mean']:.3f} vs {r['data_mean']:.3f} in "
                f"the data (gap {r['intensity_gap']:.2f} of the headroom, flagged above "
                f"{INTENSITY_TOLERANCE}): noisy or inverted samples"
            )
    return flags


def figure_flags(results: dict) -> dict[str, list[str]]:
    """{figure file: [one sentence per problem]} from the stored statistics of each experiment."""
    flags: dict[str, list[str]] = {}
    if "fig2" in results:
        flags["fig2_bound_vs_samples.png"] = _curve_flags(results["fig2"]["curves"], "Fig. 2")
        flags["fig5_samples.png"] = _samples_flags(results["fig2"].get("samples", {}))
    if "fig3" in results:
        flags["fig3_marginal_likelihood.png"] = _curve_flags(results["fig3"]["curves"], "Fig. 3")
    for name, r in results.get("manifolds", {}).items():
        flags[f"fig4_manifold_{name}.png"] = _manifold_flags(name, r)
    return {k: v for k, v in flags.items() if v}


__all__ = [
    "FLOOR_MARGIN",
    "FLOOR_SHARE",
    "INTENSITY_TOLERANCE",
    "KL_ACTIVE_NATS",
    "MIN_BUDGETS",
    "SIMILARITY_MAX",
    "active_axes",
    "axis_kl",
    "cell_similarity",
    "figure_flags",
    "floor_share",
    "intensity_gap",
]
