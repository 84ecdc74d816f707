"""Statistics of trained models that the figure checks (tasks/reproduce/checks.py) read: latent
usage on held-out rows, the Gaussian decoder's std against its clip floor, sample and manifold
intensities. Each returns a JSON-ready dict stored beside the experiment's results."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from models.vae import LOG_VAR_MIN, VAE
from tasks.reproduce.checks import (
    active_axes,
    axis_kl,
    cell_similarity,
    floor_share,
    intensity_gap,
)

DECODER_STD_FLOOR = math.exp(0.5 * LOG_VAR_MIN)  # the soft clip's lower bound on the decoder std


def latent_usage(model: VAE, x: np.ndarray, rows: int = 500) -> dict:
    """Active axes and mean KL per axis of q(z|x) on the first ``rows`` rows of ``x``."""
    mean, std = (t.numpy() for t in model.posterior_params(tf.constant(x[:rows], tf.float32)))
    kl = axis_kl(mean, std)
    return {
        "active_axes": active_axes(mean, std),
        "axis_kl": [round(float(v), 4) for v in kl],
    }


def sample_stats(samples: np.ndarray, data: np.ndarray) -> dict:
    return {
        "sample_mean": float(np.mean(samples)),
        "data_mean": float(np.mean(data)),
        "intensity_gap": intensity_gap(samples, data),
    }


def manifold_stats(model: VAE, grid: np.ndarray, x_test: np.ndarray) -> dict:
    """Cell similarity of the grid [P, P, D], latent usage and, for a Gaussian decoder, its std
    on the grid's latents against the clip floor."""
    cells = grid.reshape(-1, grid.shape[-1])
    out = {"cell_similarity": cell_similarity(cells), **latent_usage(model, x_test)}
    if model.config.likelihood == "gaussian":
        z = model.posterior_params(tf.constant(x_test[:500], tf.float32))[0]
        std = model.likelihood(z).distribution.stddev().numpy()
        out |= {
            "decoder_std_floor": DECODER_STD_FLOOR,
            "decoder_std_median": float(np.median(std)),
            "decoder_std_floor_share": floor_share(std, DECODER_STD_FLOOR),
        }
    return out


__all__ = ["DECODER_STD_FLOOR", "latent_usage", "manifold_stats", "sample_stats"]
