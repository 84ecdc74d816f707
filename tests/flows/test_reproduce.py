"""`aevb reproduce`: the flow writes a report whose figures exist, whose numbers match results.json
and MLflow, and whose claim verdicts follow the numbers (tiny budgets on scikit-learn digits)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import ConfigError
from tasks.reproduce import quick_settings, render_markdown, summarize
from tasks.reproduce.checks import figure_flags
from tasks.reproduce.figures import MIN_CELL_PX

TINY = dict(
    fig2_latents=(2,),
    fig2_hidden=20,
    fig2_budgets=(500, 1000),
    fig3_train_sizes=(200,),
    fig3_budgets=(500,),
    fig3_eval_rows=20,
    fig3_hmc=(2, 10, 20),
    gradvar_draws=5,
    gradvar_train_samples=500,
    manifold_hidden=20,
    manifold_budget=500,
    vb_train_size=300,
    vb_hidden=20,
    vb_latent=2,
    vb_epochs=2,
    vb_importance=10,
    vb_theta_draws=2,
    jit_compile=False,  # at these sizes XLA compile time would dominate
)


def _curve(method: str, latent: int, n: int, values: list[float], key: str) -> dict:
    points = [
        {"samples": 100.0 * (i + 1), "seconds": 1.0, f"train_{key}": v + 1, f"test_{key}": v}
        for i, v in enumerate(values)
    ]
    return {
        "method": method,
        "latent_dim": latent,
        "num_train": n,
        "learning_rate": 0.02,
        "pilot_scores": {},
        "points": points,
    }


def test_claim_verdicts_follow_the_numbers():
    results = {
        "fig2": {
            "data": "d",
            "hidden": 5,
            "curves": [
                _curve("aevb", 3, 100, [-30.0, -25.0], "bound"),
                _curve(
                    "wake_sleep", 3, 100, [-31.0, -24.0], "bound"
                ),  # WS ahead at the last budget
                _curve("aevb", 50, 100, [-40.0, -27.0], "bound"),
            ],
        },
        "fig3": {
            "data": "d",
            "hidden": 5,
            "latent_dim": 3,
            "estimator": "e",
            "curves": [
                _curve("aevb", 3, 100, [-26.0], "log_marginal"),
                _curve("mcem", 3, 100, [-25.5], "log_marginal"),
                _curve("aevb", 3, 900, [-25.0], "log_marginal"),
                _curve("mcem", 3, 900, [-27.0], "log_marginal"),
            ],
        },
        "gradient_variance": {
            "latent_dim": 3,
            "draws": 5,
            "batch": 100,
            "trained_samples": 10,
            "init": {"A": {"encoder": 4.0, "decoder": 1.0}, "B": {"encoder": 1.0, "decoder": 1.0}},
            "trained": {
                "A": {"encoder": 2.0, "decoder": 1.0},
                "B": {"encoder": 3.0, "decoder": 1.0},
            },
        },
    }
    s = summarize(results)
    assert s["claim_aevb_minus_ws_min_test_gap"] == pytest.approx(-1.0)
    assert s["claim_aevb_minus_ws_final_min_test_gap"] == pytest.approx(-1.0)
    assert s["claim_largest_latent_minus_best_test_bound"] == pytest.approx(-2.0)
    assert s["claim_superfluous_gap_excess"] == pytest.approx(0.0)  # both train-test gaps are 1
    assert s["claim_aevb_minus_mcem_small_n_test"] == pytest.approx(-0.5)  # the smaller N is used
    assert math.isnan(s["claim_aevb_minus_mcem_small_n_test_se"])  # no per-row estimates given
    assert s["claim_gradvar_init_ratio_B_over_A"] == pytest.approx(0.25)
    md = render_markdown(results, quick_settings(dataset="digits"), {"fig2": 1.0})
    claims = md.split("## Claims")[1].split("## Setup")[0]
    lines = [line for line in claims.splitlines() if line.startswith("- ")]
    assert "does not hold" in lines[0] and "-1.00" in lines[0]  # AEVB vs wake-sleep
    assert "**holds**" in lines[1]  # superfluous latents: -2 nats is within the 5-nat allowance
    assert "does not hold" in lines[2] and "-0.50" in lines[2]  # MCEM ahead on the small set
    assert "**holds**" in lines[3] and "0.25" in lines[3]
    assert "does not hold" in lines[4] and "1.50" in lines[4]

    # Overfitting of the largest model (train-test gap 3 vs 1) flips the regularization verdict;
    # per-row estimates turn the MCEM comparison into a paired one with a standard error.
    results["fig2"]["curves"][2]["points"][-1]["train_bound"] = -24.0
    fig3 = results["fig3"]["curves"]
    fig3[0]["rows"] = {"test": [-25.0, -27.0, -26.0]}
    fig3[1]["rows"] = {"test": [-26.0, -27.5, -26.0]}
    s = summarize(results)
    assert s["claim_superfluous_gap_excess"] == pytest.approx(2.0)
    assert s["claim_aevb_minus_mcem_small_n_test"] == pytest.approx(0.5)
    assert s["claim_aevb_minus_mcem_small_n_test_se"] == pytest.approx(
        np.std([1.0, 0.5, 0.0], ddof=1) / math.sqrt(3)
    )
    md = render_markdown(results, quick_settings(dataset="digits"), {"fig2": 1.0})
    lines = [
        line
        for line in md.split("## Claims")[1].split("## Setup")[0].splitlines()
        if line.startswith("- ")
    ]
    assert "does not hold" in lines[1] and "2.00" in lines[1]
    assert "**holds**" in lines[2] and "not significant" in lines[2]


def test_unknown_experiment_is_a_config_error():
    from flows.reproduce import reproduce_flow

    with pytest.raises(ConfigError, match="unknown experiments"):
        reproduce_flow.fn(experiments=["fig9"], track=False)


@pytest.mark.slow
def test_reproduce_flow_writes_report_and_logs_to_mlflow(prefect_harness, mlflow_store, tmp_path):
    from flows.reproduce import reproduce_flow
    from tasks import tracking

    out = tmp_path / "report"
    result = reproduce_flow(quick=True, out_dir=str(out), dataset="digits", overrides=TINY)
    report = Path(result.report).read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {
        "fig2_bound_vs_samples.png",
        "fig3_marginal_likelihood.png",
        "gradient_variance.png",
        "fig5_samples.png",
        "fig4_manifold_digits.png",
        "fig4_manifold_digits-continuous.png",
    } <= set(figures)
    for name in figures:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 100
            if name.startswith("fig4_manifold_"):  # 20 x 20 cells of at least MIN_CELL_PX
                assert min(img.size) >= 20 * MIN_CELL_PX
    payload = json.loads((out / "results.json").read_text())
    # TINY evaluates Fig. 3 at one budget: flagged beside it; every stored flag is in the report.
    assert "Fig. 3 has 1 evaluated budget(s)" in " ".join(
        payload["flags"]["fig3_marginal_likelihood.png"]
    )
    assert payload["flags"] == figure_flags(payload["results"])
    for flags in payload["flags"].values():
        assert all(flag in report for flag in flags)
    assert payload["summary"] == pytest.approx(result.summary, nan_ok=True)
    assert all(math.isfinite(v) for k, v in result.summary.items() if k.startswith("claim_"))
    for curve in payload["results"]["fig2"]["curves"]:
        assert [p["samples"] for p in curve["points"]] == [500.0, 1000.0]
    run = tracking.client().get_run(result.mlflow_run_id)
    assert run.data.tags["mode"] == "quick" and run.info.status == "FINISHED"
    finite = {k: v for k, v in result.summary.items() if math.isfinite(v)}
    assert run.data.metrics == pytest.approx(finite)
    logged = {f.path for f in tracking.client().list_artifacts(result.mlflow_run_id)}
    assert {"report.md", "results.json", "results.csv", "fig2_bound_vs_samples.png"} <= logged


def test_manifolds_are_readable_and_their_checks_are_reported(tmp_path):
    """The manifolds experiment at a tiny budget, without Prefect: cells of >= MIN_CELL_PX, the
    stored statistics in range, and the report's Flagged notes exactly those they imply."""
    from tasks.reproduce import run_experiment

    s = quick_settings(dataset="digits", **{**TINY, "manifold_hidden": 10, "manifold_budget": 200})
    results = {"manifolds": run_experiment("manifolds", s, str(tmp_path))}
    for name, r in results["manifolds"].items():
        assert r["cell_px"] >= MIN_CELL_PX and r["cell_px"] % 8 == 0  # 8x8 digits, integer scale
        with Image.open(tmp_path / f"fig4_manifold_{name}.png") as img:
            assert min(img.size) >= 20 * r["cell_px"]
        assert 0 <= r["active_axes"] <= 2 and len(r["axis_kl"]) == 2
        assert -1.0 <= r["cell_similarity"] <= 1.0 + 1e-9
    gaussian = results["manifolds"]["digits-continuous"]
    assert gaussian["decoder_std_median"] >= gaussian["decoder_std_floor"] > 0
    md = render_markdown(results, s, {"manifolds": 1.0})
    flags = figure_flags(results)
    for name in results["manifolds"]:
        figure = f"fig4_manifold_{name}.png"
        after = md.split(f"]({figure})")[1].split("![")[0]
        assert ("> **Flagged:**" in after) == bool(flags.get(figure))
        assert all(flag in after for flag in flags.get(figure, []))
    assert "## Figure checks" in md


def test_fashion_mnist_rows_come_from_the_idx_train_and_test_files(tmp_path, monkeypatch):
    from tasks import reproduce
    from tasks.sources import builtin
    from tasks.sources.idx import write_idx

    # Train images all black, test images all white: after binarization the split of every row
    # tells which file it came from.
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), np.zeros((30, 28, 28), np.uint8))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.full((12, 28, 28), 255, np.uint8))
    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", str(tmp_path))
    reproduce.check_dataset("fashion-mnist")  # present: no error
    data = reproduce.load_arrays("fashion-mnist", seed=0)
    assert data.train.shape == (30, 784) and data.test.shape == (12, 784)
    assert data.train.max() == 0.0 and data.test.min() == 1.0
    assert data.image_shape == (28, 28) and data.likelihood == "bernoulli"
    assert quick_settings(dataset="fashion-mnist").dataset == "fashion-mnist"
    with pytest.raises(ConfigError, match="fashion-mnist"):
        quick_settings(dataset="cifar")


def test_settings_fit_the_data_set_size():
    from tasks.reproduce import full_settings

    # digits has 1,400 training rows: Fig. 3's "large training set" becomes all of them.
    assert quick_settings(dataset="digits").fig3_train_sizes == (500, 1400)
    assert full_settings(dataset="digits").fig3_train_sizes == (500, 1400)
    assert quick_settings().fig3_train_sizes == (500, 4000)  # mnist-5k: the defaults
    assert quick_settings(dataset="digits", fig3_train_sizes=(200,)).fig3_train_sizes == (200,)
    with pytest.raises(ConfigError, match="1400 training rows"):
        quick_settings(dataset="digits", fig3_train_sizes=(500, 4000))
    with pytest.raises(ConfigError, match="vb_train_size=1400"):
        full_settings(dataset="digits", vb_train_size=1400)
