"""Training plots as PNG files (matplotlib's Agg canvas: headless, no pyplot global state).

No mlflow here: `write_training_plots` writes PNGs into a folder and tasks/tracking.py logs it.

    learning_curves.png  train/valid ELBO per epoch; KL(q(z|x)) and full VB's KL(q(theta)) panels
                         only when the run recorded them (no empty panels)
    reconstructions.png  test inputs beside E[x | z = mean of q(z|x)]
    prior_samples.png    E[x | z] for z ~ p(z) = N(0, I)
    latent_scatter.png   means of q(z|x) coloured by label (2-D directly, else the first two PCs)
    manifold.png         2-D latents only: E[x | z] over z = Phi^-1(u), u on an even grid in
                         (0, 1)^2, Phi the standard normal CDF (the paper's Fig. 4), every
                         cell upscaled (nearest neighbour) to >= 28 pixels

and, for `aevb restore`, `plot_restoration`: a before/after grid (degraded | restored | clean).

Images are 2-D feature shapes, (H, W, 1|3), or 1-D vectors whose length is a square >= 64.
Anything else is drawn as per-feature profiles and input-vs-reconstruction scatters instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from models import constants as C

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure; matplotlib (seconds to import) loads at the first plot, so the verbs
    and the no-op pipeline that import this module but draw nothing never pay for it."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


PLOT_FILES = (
    "learning_curves.png",
    "reconstructions.png",
    "prior_samples.png",
    "latent_scatter.png",
    "manifold.png",
)
MIN_SQUARE_SIDE = 8  # a 1-D vector of length s*s counts as an s x s image only from s = 8 on
_DPI = 80
MANIFOLD_CELL_PX = 28  # manifold.png: every cell at least this many pixels on a side
_TITLE_PX = 24


def image_shape(feature_shape: Sequence[int]) -> tuple[int, ...] | None:
    """Shape to draw one example as a picture, or None for non-image data."""
    shape = tuple(int(d) for d in feature_shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3)):
        return shape[:2] if len(shape) == 2 or shape[-1] == 1 else shape
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side == shape[0] and side >= MIN_SQUARE_SIDE:
            return (side, side)
    return None


def tile(images: np.ndarray, cols: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Mosaic of images [N, H, W(, C)] in rows of ``cols``, ``pad`` pixels between cells.

    Cell (r, c) holds images[r * cols + c]; missing cells at the end are ``pad_value``.
    """
    n, h, w = images.shape[:3]
    rows = max(1, math.ceil(n / cols))
    out = np.full(
        (rows * (h + pad) - pad, cols * (w + pad) - pad, *images.shape[3:]),
        pad_value,
        dtype=np.float32,
    )
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[i]
    return out


def manifold_latents(n: int) -> np.ndarray:
    """[n * n, 2] grid z = Phi^-1(u) with u = (i + 0.5) / n; row-major, z_2 decreasing down rows.

    Equal steps in u are equal prior mass, so the grid covers p(z) evenly (paper, Fig. 4).
    """
    u = (np.arange(n) + 0.5) / n
    z = np.array([NormalDist().inv_cdf(float(v)) for v in u])
    z1, z2 = np.meshgrid(z, z[::-1])
    return np.stack([z1.ravel(), z2.ravel()], axis=1).astype(np.float32)


def principal_components(z: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project [N, D] onto its first ``k`` principal axes: ([N, k] scores, [k] variance ratios)."""
    centred = z - z.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return centred @ vt[:k].T, ratio


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


LEARNING_PANELS = (
    ("ELBO per datapoint (higher is better)", (C.TRAIN_ELBO, C.VALID_ELBO)),
    ("KL(q(z|x) || p(z)) per datapoint", (C.TRAIN_KL, C.VALID_KL)),
    ("KL(q(theta) || p(theta)), full VB", (C.TRAIN_KL_THETA,)),
)


def learning_curve_panels(history: Sequence[dict[str, float]]) -> list[tuple[str, list[str]]]:
    """The panels of `plot_learning_curves` that have data: (title, keys with a finite value).

    A run records only some of the keys (full VB over theta logs no train_kl but its KL(theta));
    a panel without any recorded series is left out rather than drawn empty.
    """
    panels = []
    for title, keys in LEARNING_PANELS:
        shown = [k for k in keys if any(math.isfinite(h.get(k, math.nan)) for h in history)]
        if shown:
            panels.append((title, shown))
    return panels or [(LEARNING_PANELS[0][0], [])]


def plot_learning_curves(history: Sequence[dict[str, float]], path: str) -> str:
    """ELBO per epoch for train and valid; KL(z) and full VB's KL(theta) panels when recorded."""
    panels = learning_curve_panels(history)
    fig = _figure(figsize=(4.5 * len(panels), 3.5))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = [h.get(key, math.nan) for h in history]
            ax.plot(epochs, values, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend()
    return _save(fig, path)


def _show_mosaic(ax, mosaic: np.ndarray, title: str) -> None:
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.set_title(title)
    ax.set_axis_off()


def _as_images(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = x.reshape(len(x), *shape)
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < 0.0 or hi > 1.0:  # model space outside [0, 1]: scale for display only
        x = (x - lo) / (hi - lo or 1.0)
    return x


def _profiles(ax, layers: Sequence[tuple[np.ndarray, str, str]], title: str) -> None:
    """Row i of every layer (rows [R, D], line style, colour) drawn over the feature index,
    stacked with a common vertical offset per row so that layers of the same row overlap."""
    span = max(float(np.ptp(rows)) for rows, _, _ in layers) or 1.0
    for rows, style, colour in layers:
        for i, row in enumerate(rows):
            ax.plot(np.arange(rows.shape[1]), row - i * 1.2 * span, style, color=colour, lw=1, ms=3)
    ax.set_title(title)
    ax.set_xlabel("feature index")
    ax.set_yticks([])


def plot_reconstructions(
    x: np.ndarray, reconstruction: np.ndarray, feature_shape: Sequence[int], path: str
) -> str:
    """Images: inputs beside their reconstructions. Else: value scatter plus a few profiles."""
    shape = image_shape(feature_shape)
    if shape is not None:
        n = min(len(x), 32)
        cols = 8
        fig = _figure(figsize=(10, 0.75 * math.ceil(n / cols) + 1))
        ax_in, ax_rec = fig.subplots(1, 2)
        _show_mosaic(ax_in, tile(_as_images(x[:n], shape), cols), "test inputs")
        _show_mosaic(ax_rec, tile(_as_images(reconstruction[:n], shape), cols), "reconstructions")
        return _save(fig, path)
    fig = _figure(figsize=(10, 4))
    ax_sc, ax_pr = fig.subplots(1, 2)
    ax_sc.scatter(x.ravel(), reconstruction.ravel(), s=2, alpha=0.3)
    lo, hi = float(min(x.min(), reconstruction.min())), float(max(x.max(), reconstruction.max()))
    ax_sc.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax_sc.set_xlabel("input value")
    ax_sc.set_ylabel("reconstructed value")
    ax_sc.set_title("every feature of the test rows")
    rows = min(len(x), 6)
    _profiles(
        ax_pr,
        [(x[:rows], "o", "C0"), (reconstruction[:rows], "-", "C1")],
        "inputs (dots) and reconstructions (lines)",
    )
    return _save(fig, path)


def plot_samples(
    samples: np.ndarray,
    feature_shape: Sequence[int],
    path: str,
    data: np.ndarray | None = None,
    title: str = "E[x|z], z ~ p(z)",
) -> str:
    """Images: a mosaic of the first 64 samples. Else: per-feature mean +- std of samples vs data,
    and profiles."""
    shape = image_shape(feature_shape)
    if shape is not None:
        fig = _figure(figsize=(6, 6))
        _show_mosaic(fig.subplots(), tile(_as_images(samples[:64], shape), 8), title)
        return _save(fig, path)
    fig = _figure(figsize=(10, 4))
    ax_mom, ax_pr = fig.subplots(1, 2)
    idx = np.arange(samples.shape[1])
    for arr, label, colour in ((data, "test data", "C0"), (samples, title, "C1")):
        if arr is None or not len(arr):
            continue
        m, s = arr.mean(axis=0), arr.std(axis=0)
        ax_mom.plot(idx, m, color=colour, label=f"{label} mean")
        ax_mom.fill_between(idx, m - s, m + s, color=colour, alpha=0.2)
    ax_mom.set_xlabel("feature index")
    ax_mom.set_title("per-feature mean +- std")
    ax_mom.legend()
    _profiles(ax_pr, [(samples[:8], "-", "C1")], "samples")
    return _save(fig, path)


def plot_latents(z: np.ndarray, labels: np.ndarray, path: str) -> str:
    """Scatter of latent means coloured by label (null labels, -1, in grey)."""
    if z.shape[1] == 2:
        xy, names = z, ("z_1", "z_2")
    elif z.shape[1] == 1:
        xy, names = np.stack([z[:, 0], np.zeros(len(z))], axis=1), ("z_1", "")
    else:
        xy, ratio = principal_components(z)
        names = (f"PC1 ({ratio[0]:.0%} of variance)", f"PC2 ({ratio[1]:.0%})")
    fig = _figure(figsize=(6, 5))
    ax = fig.subplots()
    known = labels >= 0
    if (~known).any():
        ax.scatter(xy[~known, 0], xy[~known, 1], s=4, c="0.6", label="no label")
    classes = np.unique(labels[known])
    if len(classes) and len(classes) <= 20:
        cmap = "tab10" if len(classes) <= 10 else "tab20"
        for i, cls in enumerate(classes):
            sel = labels == cls
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=_colour(cmap, i), label=str(cls))
        ax.legend(markerscale=3, fontsize="small", loc="best", ncol=2)
    elif len(classes):
        pts = ax.scatter(xy[known, 0], xy[known, 1], s=4, c=labels[known], cmap="viridis")
        fig.colorbar(pts, ax=ax, label="label")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("latent means of q(z|x), test rows")
    return _save(fig, path)


def _colour(cmap: str, i: int) -> tuple[float, ...]:
    from matplotlib import colormaps

    return colormaps[cmap](i % colormaps[cmap].N)


def plot_manifold(decoded: np.ndarray, n: int, feature_shape: Sequence[int], path: str) -> str:
    """decoded [n * n, D] = E[x|z] on `manifold_latents(n)`: a picture grid or profile grid."""
    shape = image_shape(feature_shape)
    if shape is not None:  # pixel for pixel: cells upscaled to >= MANIFOLD_CELL_PX (nearest)
        scale = max(1, math.ceil(MANIFOLD_CELL_PX / min(shape[:2])))
        images = np.repeat(np.repeat(_as_images(decoded, shape), scale, 1), scale, 2)
        mosaic = tile(images, n)
        h, w = mosaic.shape[:2]
        fig = _figure(figsize=(w / _DPI, (h + _TITLE_PX) / _DPI))
        ax = fig.add_axes((0.0, 0.0, 1.0, h / (h + _TITLE_PX)))
        cmap = "gray" if mosaic.ndim == 2 else None
        ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set_title("learned manifold, z = Phi^-1(u)")
        ax.set_axis_off()
        fig.savefig(path, dpi=_DPI)
        return path
    fig = _figure(figsize=(7, 7))
    ax = fig.subplots()
    lo, hi = float(decoded.min()), float(decoded.max())
    scaled = (decoded - lo) / (hi - lo or 1.0)
    t = np.linspace(0.05, 0.95, decoded.shape[1])
    for i, row in enumerate(scaled):
        r, c = divmod(i, n)
        ax.plot(c + t, (n - 1 - r) + 0.05 + 0.9 * row, lw=0.8, color="C0")
    ax.set_xlim(0, n)
    ax.set_ylim(0, n)
    ax.set_xticks(np.arange(n) + 0.5, [f"{v:.1f}" for v in manifold_latents(n)[:n, 0]])
    ax.set_yticks(np.arange(n) + 0.5, [f"{v:.1f}" for v in manifold_latents(n)[::n, 1][::-1]])
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    ax.set_title("learned manifold: feature profiles E[x|z]")
    return _save(fig, path)


def write_training_plots(
    vae,
    x: np.ndarray,
    labels: np.ndarray,
    history: Sequence[dict[str, float]],
    out_dir: str,
    seed: int = 0,
) -> list[str]:
    """Render every plot for a trained ``vae`` (models.vae.VAE) on held-out rows x [N, D]."""
    import tensorflow as tf

    os.makedirs(out_dir, exist_ok=True)
    shape = vae.config.feature_shape
    k = vae.config.latent_dim
    xt = tf.constant(x, tf.float32)
    z_mean = vae.posterior_params(xt)[0]
    reconstruction = vae.decode_mean(z_mean).numpy()
    prior_z = np.random.default_rng(seed).standard_normal((64, k)).astype(np.float32)
    samples = vae.decode_mean(tf.constant(prior_z)).numpy()
    paths = [
        plot_learning_curves(history, os.path.join(out_dir, PLOT_FILES[0])),
        plot_reconstructions(x, reconstruction, shape, os.path.join(out_dir, PLOT_FILES[1])),
        plot_samples(samples, shape, os.path.join(out_dir, PLOT_FILES[2]), data=x),
        plot_latents(z_mean.numpy(), labels, os.path.join(out_dir, PLOT_FILES[3])),
    ]
    if k == 2:
        n = 20 if image_shape(shape) is not None else 8
        decoded = vae.decode_mean(tf.constant(manifold_latents(n))).numpy()
        paths.append(plot_manifold(decoded, n, shape, os.path.join(out_dir, PLOT_FILES[4])))
    return paths


def plot_restoration(
    degraded: np.ndarray,
    restored: np.ndarray,
    clean: np.ndarray | None,
    degraded_shape: Sequence[int],
    feature_shape: Sequence[int],
    path: str,
    title: str,
    mask: np.ndarray | None = None,
) -> str:
    """Before/after grid, one example per row: degraded | restored | clean (when known).

    Images get one cell per picture (a super-resolution input keeps its smaller shape; entries
    that ``mask`` marks missing, 0, are red); other data is drawn as profiles, the restored line
    over the clean one and the degraded dots.
    """
    name = "degraded" + ("\n(red: missing)" if mask is not None else "")
    panels = [(name, degraded, degraded_shape), (f"restored\n({title})", restored, feature_shape)]
    if clean is not None:
        panels.append(("clean", clean, feature_shape))
    shapes = [image_shape(shape) for _, _, shape in panels]
    n = len(restored)
    if all(s is not None for s in shapes):
        fig = _figure(figsize=(1.8 * len(panels) + 0.4, 1.5 * n + 0.8))
        axes = np.asarray(fig.subplots(n, len(panels), squeeze=False))
        for col, ((name, x, _), shape) in enumerate(zip(panels, shapes, strict=True)):
            images = _as_images(x, shape)
            if col == 0 and mask is not None and len(shape) == 2:
                images = np.repeat(images[..., None], 3, axis=-1)
                images[mask.reshape(images.shape[:3]) < 0.5] = (1.0, 0.15, 0.15)
            for row in range(n):
                _show_mosaic(axes[row, col], images[row], name if row == 0 else "")
        return _save(fig, path)
    fig = _figure(figsize=(10, 1.2 * n + 1))
    ax = fig.subplots()
    layers = [(restored, "-", "C1")] + ([(clean, "--", "k")] if clean is not None else [])
    if degraded.shape[1:] == restored.shape[1:]:
        layers.insert(0, (degraded, "o", "C0"))
    _profiles(ax, layers, f"degraded (dots), restored by {title} (line), clean (dashed)")
    return _save(fig, path)
