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


def plot_image_panels(
    panels: dict[str, np.ndarray], shape: tuple[int, int], path: Path, per_row: int = 10
) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items(), strict=True):
        rows = math.ceil(len(images) / per_row)
        canvas = np.ones((rows * shape[0], per_row * shape[1]), np.float32)
        for i, img in enumerate(np.clip(images, 0.0, 1.0)):
            r, c = divmod(i, per_row)
            canvas[r * shape[0] : (r + 1) * shape[0], c * shape[1] : (c + 1) * shape[1]] = (
                img.reshape(shape)
            )
        ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    save_figure(fig, path)


__all__ = ["COLORS", "LABELS", "plot_curves", "plot_image_panels", "save_figure"]
