"""Figures of the reproduce report: learning curves per panel and image grids (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-sleep", "mcem": "MCEM"}
COLORS = {"aevb": "tab:blue", "wake_sleep": "tab:red", "mcem": "tab:green"}


def save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def short_count(n: float) -> str:
    """10000 -> '10k', 1500000 -> '1.5M' (tick labels)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:g}{unit}"
    return f"{n:g}"


def plot_curves(curves: list[dict], panel_key: str, quantity: str, title: str, path: Path) -> None:
    panels = sorted({c[panel_key] for c in curves})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, value in zip(axes[0], panels, strict=True):
        shown = []
        for c in (c for c in curves if c[panel_key] == value):
            xs = [p["samples"] for p in c["points"]]
            for split, style in (("train", "-"), ("test", "--")):
                ys = [p.get(f"{split}_{quantity}", math.nan) for p in c["points"]]
                if all(math.isnan(y) for y in ys):
                    continue
                errs = [p.get(f"{split}_{quantity}_se", 0.0) for p in c["points"]]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=errs,
                    fmt=style,
                    marker="o",
                    ms=3,
                    capsize=2,
                    color=COLORS[c["method"]],
                    label=f"{LABELS[c['method']]} {split}",
                )
                shown += [y for y in ys if c["method"] == "aevb" or quantity == "log_marginal"]
        if shown:  # the paper's axes: keep AEVB's range, let far-off baselines leave the plot
            lo, hi = min(shown), max(shown)
            ax.set_ylim(lo - 0.6 * (hi - lo) - 1.0, hi + 0.15 * (hi - lo) + 0.5)
        ax.set_xscale("log")
        budgets = sorted({p["samples"] for c in curves for p in c["points"]})
        ax.set_xticks(budgets, [short_count(b) for b in budgets])  # the evaluated budgets only
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training samples evaluated")
        ax.set_title(f"{panel_key.replace('_', ' ')} = {value}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(quantity.replace("_", " ") + " per datapoint (nats)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


MIN_CELL_PX = 28  # image grids: every cell at least this many screen pixels on a side
_GRID_DPI = 100
_TITLE_PX, _GAP_PX, _PAD_PX = 28, 16, 1


def cell_scale(shape: tuple[int, int], min_px: int = MIN_CELL_PX) -> int:
    """Integer nearest-neighbour upscaling so that an image of ``shape`` spans >= ``min_px``."""
    return max(1, math.ceil(min_px / min(shape)))


def image_grid(images: np.ndarray, shape: tuple[int, int], per_row: int, scale: int) -> np.ndarray:
    """Mosaic of images [N, H*W] in rows of ``per_row``, each upscaled ``scale`` x by repetition
    (nearest neighbour), with _PAD_PX grey lines between cells; values clipped to [0, 1]."""
    h, w = shape[0] * scale, shape[1] * scale
    rows, step_h, step_w = math.ceil(len(images) / per_row), h + _PAD_PX, w + _PAD_PX
    canvas = np.full((rows * step_h - _PAD_PX, per_row * step_w - _PAD_PX), 0.5, np.float32)
    for i, img in enumerate(np.clip(images, 0.0, 1.0)):
        r, c = divmod(i, per_row)
        big = np.repeat(np.repeat(img.reshape(shape), scale, axis=0), scale, axis=1)
        canvas[r * step_h : r * step_h + h, c * step_w : c * step_w + w] = big
    return canvas


def plot_image_panels(
    panels: dict[str, np.ndarray], shape: tuple[int, int], path: Path, per_row: int = 10
) -> int:
    """Image grids side by side, one screen pixel per canvas pixel (no resampling): each cell is
    upscaled to >= MIN_CELL_PX pixels. Returns the cell size in pixels."""
    scale = cell_scale(shape)
    canvases = [image_grid(images, shape, per_row, scale) for images in panels.values()]
    width = sum(c.shape[1] for c in canvases) + _GAP_PX * (len(canvases) + 1)
    height = max(c.shape[0] for c in canvases) + _TITLE_PX + _GAP_PX
    fig = plt.figure(figsize=(width / _GRID_DPI, height / _GRID_DPI), dpi=_GRID_DPI)
    left = _GAP_PX
    for title, canvas in zip(panels, canvases, strict=True):
        ch, cw = canvas.shape
        ax = fig.add_axes(
            (left / width, (height - _TITLE_PX - ch) / height, cw / width, ch / height)
        )
        ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        left += cw + _GAP_PX
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_GRID_DPI)
    plt.close(fig)
    return shape[0] * scale


def plot_gradient_variance(out: dict, trained_samples: int, path: Path) -> None:
    """Bars of the encoder-gradient covariance trace, estimators A and B, initial and trained."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, res in enumerate((out["init"], out["trained"])):
        for j, est in enumerate(("A", "B")):
            ax.bar(
                i * 3 + j,
                res[est]["encoder"],
                color=("tab:orange", "tab:blue")[j],
                label=f"estimator {est}" if i == 0 else None,
            )
        ax.text(
            i * 3 + 0.5,
            res["A"]["encoder"],
            f"B/A = {res['B']['encoder'] / res['A']['encoder']:.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks([0.5, 3.5], ["initial parameters", f"after {trained_samples:,} samples"])
    ax.set_yscale("log")
    ax.set_ylabel("trace of gradient covariance (encoder)")
    ax.legend()
    save_figure(fig, path)


__all__ = [
    "COLORS",
    "LABELS",
    "MIN_CELL_PX",
    "cell_scale",
    "image_grid",
    "plot_curves",
    "plot_gradient_variance",
    "plot_image_panels",
    "save_figure",
]
