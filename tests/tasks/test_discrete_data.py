"""8-bit data through the store, training, evaluation and export: continuous likelihoods see
dequantized inputs and report log-probabilities of the stored values (with bits/dim), a Bernoulli
decoder with train.binarize='dynamic' sees fresh binarizations, and the Gaussian std floor warns.
Closed forms from models/discrete.py; real Parquet, MLflow (temp SQLite) and TF throughout."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os

import numpy as np
import pytest
from scipy.stats import norm

from models import constants as C
from models import discrete as Q
from models.config import ModelConfig, TrainConfig
from models.errors import ConfigError
from tests.models.test_discrete import FixedGaussian, _gaussian_with_log_var_bias

D = 16  # 4 x 4 pixels
ROWS = {"train": 200, "valid": 40, "test": 40}


def write_8bit(root: str, name: str = "bytes", seed: int = 0) -> str:
    """uint8 0..255 images with scale 1/255 (256 levels), class-dependent intensities."""
    from tasks.store.writer import DatasetWriter

    rng = np.random.default_rng(seed)
    writer = DatasetWriter(
        root, name, feature_shape=(4, 4), storage_dtype="uint8", scale=1 / 255, split_seed=seed,
        source={"kind": "test", "uri": f"memory://{name}/{seed}", "sha256": ""},
    )  # fmt: skip
    with writer:
        for split, n in ROWS.items():
            labels = rng.integers(0, 2, n)
            means = np.where(np.arange(D)[None, :] % 2 == labels[:, None], 200.0, 40.0)
            x = np.clip(rng.normal(means, 30.0), 0, 255).astype(np.uint8)
            writer.write(split, [f"{split}-{i}" for i in range(n)], x, labels)
        return writer.commit().version


@pytest.fixture()
def bytes_data(data_root):
    from tasks.store.datasets import load_manifest

    version = write_8bit(data_root)
    return data_root, load_manifest(data_root, "bytes", version)


def _batches(root, manifest, transform, epoch, seed=5):
    from tasks.store.streaming import make_tf_dataset

    ds = make_tf_dataset(root, manifest.name, manifest.version, "train", 50, shuffle=True,
                         seed=seed, epoch=epoch, transform=transform)  # fmt: skip
    return np.concatenate([b.numpy() for b in ds])


def test_training_batches_are_dequantized_afresh_each_epoch_and_seeded(bytes_data):
    from tasks.store.streaming import make_tf_dataset, training_transform

    root, m = bytes_data
    t = training_transform(m, "gaussian", "none")
    assert (t.kind, t.levels) == ("dequantize", 256)
    plain = make_tf_dataset(root, m.name, m.version, "train", 50, shuffle=True, seed=5, epoch=1)
    k = np.round(np.concatenate([b.numpy() for b in plain]) * 255)
    e1, e1_again, e2 = (_batches(root, m, t, e) for e in (1, 1, 2))
    assert np.all(e1 >= k / 256) and np.all(e1 < (k + 1) / 256)  # same rows, same order
    assert np.array_equal(e1, e1_again) and not np.array_equal(np.sort(e1, 0), np.sort(e2, 0))
    assert not np.array_equal(e1, _batches(root, m, t, 1, seed=6))


def test_dynamic_binarization_draws_each_epoch_with_the_intensity_as_mean(bytes_data):
    from tasks.store.streaming import make_tf_dataset, training_transform

    root, m = bytes_data
    t = training_transform(m, "bernoulli", "dynamic")
    plain = make_tf_dataset(root, m.name, m.version, "train", 50, shuffle=True, seed=5, epoch=1)
    p = np.concatenate([b.numpy() for b in plain])
    b1, b2 = _batches(root, m, t, 1), _batches(root, m, t, 2)
    assert set(np.unique(b1)) == {0.0, 1.0} and np.array_equal(b1, _batches(root, m, t, 1))
    assert not np.array_equal(np.sort(b1, 0), np.sort(b2, 0))
    n = p.size
    assert abs(b1.mean() - p.mean()) < 4 * math.sqrt(np.mean(p * (1 - p)) / n)


def test_evaluate_split_reports_the_closed_form_log_probability_and_bits_per_dim(bytes_data):
    from tasks.scoring import evaluate_split
    from tasks.store import readers

    root, m = bytes_data
    mu, sigma = np.linspace(0.2, 0.8, D), np.linspace(0.1, 0.3, D)
    ev = evaluate_split(FixedGaussian(mu, sigma), root, m, "test", num_samples=3, batch_size=25)
    assert ev.score_kind == "log-probability:256-level"
    t = Q.input_transform("gaussian", "none", 256)
    batches = readers.iter_batches(root, m.name, m.version, "test", 25)
    y = np.concatenate([Q.transform_rows(t, x, 0, i) for i, (_, x, _) in enumerate(batches)])
    closed = norm.logpdf(y, mu, sigma).sum(axis=1) - D * math.log(256)
    np.testing.assert_allclose(ev.per_point["log_marginal"], closed, atol=3e-4)
    assert ev.summary["log_marginal_likelihood"] == pytest.approx(closed.mean(), abs=3e-4)
    assert ev.summary["bits_per_dim"] == pytest.approx(
        -ev.summary["log_marginal_likelihood"] / (D * math.log(2)), rel=1e-12
    )
    again = evaluate_split(FixedGaussian(mu, sigma), root, m, "test", num_samples=3, batch_size=25)
    np.testing.assert_array_equal(ev.per_point["log_marginal"], again.per_point["log_marginal"])


def test_binarize_is_refused_for_a_continuous_decoder_in_one_line(bytes_data, capsys):
    from flows.cli import main
    from tasks.train import plan_training

    root, m = bytes_data
    with pytest.raises(ConfigError, match="needs model.likelihood='bernoulli'"):
        plan_training("bytes", ModelConfig(likelihood="gaussian"),
                      TrainConfig(binarize="dynamic"), root, m.version, None)  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", "--dataset", "bytes", "--data-root", root,
                   "model.likelihood=gaussian", "train.binarize=dynamic"])  # fmt: skip
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "binarize" in lines[0], err.getvalue()


def test_the_floor_warning_fires_on_the_floor_only(bytes_data, mlflow_store, caplog):
    from tasks import tracking
    from tasks.run_records import TAG_STD_FLOOR, warn_std_floor

    root, m = bytes_data
    run_id = tracking.start_run("aevb-floor", run_name="floor")
    on_floor = _gaussian_with_log_var_bias(-200.0, min_std=0.01, d=D)
    with caplog.at_level(logging.WARNING):
        assert warn_std_floor(run_id, on_floor, root, m) == 1.0
    warned = [r for r in caplog.records if "model.min_std=0.01" in r.getMessage()]
    assert len(warned) == 1 and "100% of held-out pixels" in warned[0].getMessage()
    assert "model.min_std=0.01" in tracking.client().get_run(run_id).data.tags[TAG_STD_FLOOR]
    caplog.clear()
    other = tracking.start_run("aevb-floor", run_name="free")
    free = _gaussian_with_log_var_bias(math.log(0.2**2), min_std=0.01, d=D)
    with caplog.at_level(logging.WARNING):
        assert warn_std_floor(other, free, root, m) == 0.0
    assert not [r for r in caplog.records if "min_std" in r.getMessage()]
    assert TAG_STD_FLOOR not in tracking.client().get_run(other).data.tags


@pytest.mark.parametrize(
    ("likelihood", "binarize", "kind"),
    [
        ("gaussian", "none", "log-probability:256-level"),
        ("bernoulli", "dynamic", "log-probability:binarized"),
    ],
)
def test_train_and_evaluate_report_numbers_about_the_stored_data(
    bytes_data, mlflow_store, likelihood, binarize, kind
):
    from tasks import tracking
    from tasks.evaluate import evaluate
    from tasks.scoring import model_facts
    from tasks.train import train

    root, m = bytes_data
    model = ModelConfig(latent_dim=2, hidden_sizes=(16,), likelihood=likelihood)
    cfg = TrainConfig(epochs=2, batch_size=50, jit_compile=False, binarize=binarize)
    out = train("bytes", model, cfg, root)
    meta = json.load(open(os.path.join(out.saved_model_dir, "config.json")))
    assert (meta["data_levels"], meta["binarize"]) == (256, binarize)
    assert model_facts(out.saved_model_dir, "bytes").kind == kind
    offset = Q.input_transform(likelihood, binarize, 256).offset(D)
    history = tracking.client().get_metric_history(out.run_id, C.VALID_ELBO)
    assert out.best_valid_elbo == pytest.approx(max(h.value for h in history))
    ev = evaluate(out.saved_model_dir, "bytes", m.version, root, C.TEST, 16, run_id=out.run_id)
    assert ev.score_kind == kind and ev.bits_per_dim is not None
    assert ev.bits_per_dim == pytest.approx(-ev.log_marginal_likelihood / (D * math.log(2)))
    assert tracking.client().get_run(out.run_id).data.tags["aevb.score_kind"] == kind
    if offset:  # a density of y in [0, 1]^16 converted: a log-probability is <= 0
        assert ev.log_marginal_likelihood < 0 and ev.elbo <= ev.log_marginal_likelihood + 1.0
    again = evaluate(out.saved_model_dir, "bytes", m.version, root, C.TEST, 16)
    assert again.log_marginal_likelihood == ev.log_marginal_likelihood  # one fixed draw


def test_dequantized_training_gets_its_own_run_key_and_bernoulli_keeps_its_old_one(bytes_data):
    """A finished run trained on the stored values is never reused as a dequantized one."""
    from tasks.train import plan_training, run_key

    root, m = bytes_data
    for likelihood, kind in (("gaussian", "dequantize"), ("bernoulli", "none")):
        model = ModelConfig(likelihood=likelihood)
        plan = plan_training("bytes", model, TrainConfig(), root, m.version, None)
        assert plan.transform.kind == kind
        shaped = plan.model
        assert plan.key == run_key(shaped, TrainConfig(), "bytes", m.version, kind)
        assert (plan.key == run_key(shaped, TrainConfig(), "bytes", m.version)) == (kind == "none")
