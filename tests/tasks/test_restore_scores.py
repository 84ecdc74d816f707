"""Scoring and naming of restorations without a trained model: margins over the best baseline,
the MLflow keys, the low-acceptance warning (on a chain forced to reject), and output folders keyed
by every setting that changes the result."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.restore_plan import RestoreSettings, variant
from tasks.restore_scores import (
    LOW_ACCEPTANCE,
    SplitScores,
    best_baseline,
    mlflow_records,
    warnings_of,
)


def test_margins_are_the_model_minus_the_best_baseline_and_negative_where_it_loses():
    clean = np.zeros((2, 4))
    model = np.full((2, 4), 0.1)  # MSE 0.01, PSNR 20 dB
    good, bad = np.full((2, 4), 0.05), np.full((2, 4), 0.5)  # 26.02 dB, 6.02 dB
    scores = SplitScores(["good", "bad"], peak=1.0)
    scores.add(model, {"good": good, "bad": bad}, clean)
    m = scores.metrics("test")
    assert m["test_psnr"] == pytest.approx(20.0) and m["test_mse"] == pytest.approx(0.01)
    assert m["test_baseline_good_psnr"] == pytest.approx(20 * np.log10(20))
    assert m["test_baseline_psnr"] == m["test_baseline_good_psnr"]
    assert m["test_margin_psnr"] == pytest.approx(20.0 - 20 * np.log10(20))  # < 0: we lose
    assert m["test_margin_mse"] == pytest.approx(0.0025 - 0.01)  # baseline MSE - ours < 0
    assert best_baseline(m, ["good", "bad"]) == "good"
    assert SplitScores(["good"], 1.0).metrics("test") == {}  # nothing scored, nothing reported


def test_mlflow_keys_carry_the_split_kind_and_variant_and_tags_name_the_best_baseline():
    metrics, tags = mlflow_records(
        {"test_psnr": 17.0, "test_margin_psnr": -0.5},
        {"acceptance_rate": 0.04},
        ["low"],
        "restore_inpaint_mwg_iter400",
        "harmonic",
    )
    assert metrics == {
        "test_restore_inpaint_mwg_iter400_psnr": 17.0,
        "test_restore_inpaint_mwg_iter400_margin_psnr": -0.5,
        "restore_inpaint_mwg_iter400_acceptance_rate": 0.04,
    }
    assert tags["aevb.restore_inpaint_mwg_iter400.best_baseline"] == "harmonic"
    assert tags["aevb.restore_inpaint_mwg_iter400.low_acceptance"] == "true"


def test_a_chain_whose_proposal_misses_the_posterior_accepts_little_and_warns():
    import tensorflow as tf

    from models import degradations as Dg
    from models import restoration as R
    from tests.models.test_restoration import _orthogonal_model

    spec = Dg.DegradationSpec("inpaint", (4, 4))
    rng = np.random.default_rng(5)
    y = np.tile(rng.normal(0.5, 0.5, size=(1, 16)).astype(np.float32), (20, 1))
    mask = np.tile((np.arange(16) % 3 != 0).astype(np.float32), (20, 1))
    rates = {}
    for name, kw in (("exact", {}), ("off", {"q_shift": 3.0, "q_scale": 0.3})):
        restorer = R.Restorer(_orthogonal_model(**kw), spec, iterations=60, burn_in=10)
        rates[name] = restorer.restore("mwg", y * mask, mask, seed=tf.constant([1, 2]))[1]
    assert rates["off"]["acceptance_rate"] < LOW_ACCEPTANCE < rates["exact"]["acceptance_rate"]
    (line,) = warnings_of(rates["off"], "mwg")
    assert f"accepted {rates['off']['acceptance_rate']:.1%}" in line and "--iterations" in line
    assert warnings_of(rates["exact"], "mwg") == [] and warnings_of({}, "map") == []


@pytest.mark.parametrize(
    "method, kind, settings, extra, name",
    [
        ("map", "gaussian", {}, {}, "map"),
        ("map", "gaussian", {"estimate_noise": True}, {}, "map-estimate-noise"),
        ("map", "gaussian", {"noise_std": 0.1}, {}, "map-sigma0.1"),
        ("map", "gaussian", {"estimate_noise": True, "batch_size": 50}, {},
         "map-estimate-noise-batch50"),
        ("map", "inpaint", {"map_steps": 50, "learning_rate": 0.01, "seed": 3}, {},
         "map-steps50-lr0.01"),  # MAP draws nothing: the seed does not change it
        ("amortized", "gaussian", {"map_steps": 50, "estimate_noise": True}, {}, "amortized"),
        ("mwg", "inpaint", {"iterations": 400, "seed": 3}, {}, "mwg-iter400-seed3"),
        ("pseudo-gibbs", "inpaint", {"burn_in": 10}, {}, "pseudo-gibbs-burn10"),
        ("map", "superres", {"noise_std": 0.02}, {"splits": ("valid", "test")},
         "map-sigma0.02-splits-valid-test"),
        ("map", "inpaint", {}, {"mask": "my-mask"}, "map-mask-my-mask"),
    ],
)  # fmt: skip
def test_the_output_folder_names_every_setting_that_changes_the_result(
    method, kind, settings, extra, name
):
    assert variant(method, kind, RestoreSettings(**settings), **extra) == name
