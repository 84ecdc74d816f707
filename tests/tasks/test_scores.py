"""Per-row anomaly scores: `elbo` and `log_px` in latent tables, and `aevb score` on a new batch.

A model is trained on scikit-learn's digits; a new batch is a dataset version of its own holding
held-out digits plus planted out-of-distribution rows: uniform noise, and 8x8 grey patches of
another dataset (the two photographs scikit-learn ships, `load_sample_images`). The planted rows
must be the lowest-scoring rows by elbo and by log_px.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C

LATENT_DIM = 4
N_NOISE, N_PATCH = 20, 20


def _read(path: str):
    return pq.read_table(path, ignore_prefixes=[".", "_"]).to_pandas()


def photo_patches(n: int, seed: int = 0) -> np.ndarray:
    """n textured 8x8 grey patches of scikit-learn's sample photographs, as uint8 in 0..16.

    Chosen by a model-free rule (mid-grey, textured) so they are plainly not digits."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    grey = [img.mean(axis=2) / 255.0 for img in load_sample_images().images]
    out = []
    while len(out) < n:
        img = grey[len(out) % len(grey)]
        r, c = rng.integers(0, img.shape[0] - 8), rng.integers(0, img.shape[1] - 8)
        patch = img[r : r + 8, c : c + 8]
        if 0.3 < patch.mean() < 0.7 and patch.std() > 0.1:
            out.append(np.round(patch * 16).astype(np.uint8))
    return np.stack(out)


def write_new_batch(root: str, digits_rows: np.ndarray, seed: int = 0) -> str:
    """Dataset `digits-batch`: held-out digits, uniform noise and photo patches (test split)."""
    from tasks.store.writer import DatasetWriter

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 17, (N_NOISE, 8, 8)).astype(np.uint8)
    patches = photo_patches(N_PATCH, seed)
    x = np.concatenate([digits_rows.reshape(-1, 8, 8), noise, patches])
    ids = [f"digit-{i}" for i in range(len(digits_rows))]
    ids += [f"noise-{i}" for i in range(N_NOISE)] + [f"photo-{i}" for i in range(N_PATCH)]
    writer = DatasetWriter(
        root,
        "digits-batch",
        feature_shape=(8, 8),
        storage_dtype="uint8",
        scale=1 / 16,
        split_seed=0,
        source={"kind": "test", "uri": "memory://digits-batch", "sha256": ""},
    )
    with writer:
        writer.write(C.TEST, ids, x.reshape(len(x), -1), np.full(len(x), -1))
        return writer.commit().version


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """digits ingested, a small model trained, evaluated and registered as aevb-digits@champion;
    the new batch written beside it."""
    from models.config import ModelConfig, TrainConfig
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest
    from tasks.register import register
    from tasks.store import datasets, readers
    from tasks.train import train

    tmp = tmp_path_factory.mktemp("scores")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "data")
    ds = ingest("digits", "digits", root)
    model = ModelConfig(latent_dim=LATENT_DIM, hidden_sizes=(128,))
    out = train("digits", model, TrainConfig(epochs=30, learning_rate=3e-3), root)
    ev = evaluate(out.saved_model_dir, "digits", None, root, num_samples=8, run_id=out.run_id)
    reg = register(
        out.run_id,
        out.saved_model_dir,
        "digits",
        ds.version,
        ev.log_marginal_likelihood,
        data_root=root,
        eval_num_samples=8,
    )
    manifest = datasets.load_manifest(root, "digits")
    _, held_out, _ = readers.read_split_storage(root, manifest, C.TEST)  # uint8, 0..16
    assert held_out.dtype == np.uint8 and held_out.max() == 16
    batch_version = write_new_batch(root, held_out)
    yield {
        "root": root,
        "uri": f"models:/{reg.name}@champion",
        "saved": out.saved_model_dir,
        "batch_version": batch_version,
        "digits_version": ds.version,
    }
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


PROGRESS: list[str] = []  # the log lines `scored` produced
SCORING = {"splits": (C.TEST,), "log_px_samples": 500, "batch_size": 64}  # what `scored` ran


@pytest.fixture(scope="module")
def scored(registered):
    import logging

    from tasks.export import score_dataset

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            PROGRESS.append(record.getMessage())

    keep, log = Keep(), logging.getLogger("prefect.aevb")
    log.addHandler(keep)
    try:
        return score_dataset(registered["uri"], "digits-batch", registered["root"], **SCORING)
    finally:
        log.removeHandler(keep)


def test_progress_lines_name_the_score_stage(scored):
    parts = [m for m in PROGRESS if " part-test-00000: " in m]
    assert parts, PROGRESS
    assert all(m.startswith("score digits-batch part-test-00000: ") for m in parts), parts


def test_planted_rows_rank_at_the_bottom_by_elbo_and_by_log_px(scored):
    df = _read(scored.path)
    planted = df[C.COL_ID].str.startswith(("noise-", "photo-"))
    assert planted.sum() == N_NOISE + N_PATCH and (~planted).sum() == 180
    for column in ("elbo", "log_px"):
        lowest = set(df.nsmallest(N_NOISE + N_PATCH, column)[C.COL_ID])
        assert lowest == set(df[C.COL_ID][planted]), column
        # and by a margin, not by a hair: the best planted row is below the worst digit
        assert df[column][planted].max() < df[column][~planted].min(), column


def test_score_table_layout_columns_and_provenance(registered, scored):
    df = _read(scored.path)
    parts = Path(scored.path).parts[-5:]
    assert parts == ("scores", "digits-batch", "aevb-digits", "v1", registered["batch_version"])
    assert [p.name for p in Path(scored.path).iterdir()] == ["part-test-00000.parquet"]
    z_cols = [f"{p}{i}" for p in (C.Z_MEAN_PREFIX, C.Z_STD_PREFIX) for i in range(LATENT_DIM)]
    assert list(df.columns) == [C.COL_ID, C.COL_SPLIT, C.COL_LABEL, *z_cols, "elbo", "log_px"]
    assert df["elbo"].dtype == np.float64 and df["log_px"].dtype == np.float64
    assert np.isfinite(df[["elbo", "log_px"]].to_numpy()).all()
    manifest = json.loads(Path(f"{scored.path}.manifest.json").read_text())
    assert manifest["dataset"] == "digits-batch"
    assert manifest["dataset_version"] == registered["batch_version"]
    assert manifest["log_px_samples"] == 500 and manifest["model_version"] == 1
    assert manifest["columns"] == list(df.columns) and manifest["rows"] == 220


def test_elbo_is_estimator_b_with_the_documented_noise_stream(registered, scored):
    """elbo = log p(x | mu + sigma eps) - KL(q || p), eps the first draws of PCG64 seeded by
    (seed, split index, part index, 1); so it does not depend on the batch size."""
    import tensorflow as tf

    from models.saved import load_vae
    from tasks.store import readers

    df = _read(scored.path)
    vae = load_vae(registered["saved"])
    _, x, _ = readers.read_split(registered["root"], "digits-batch", None, C.TEST)
    x = tf.constant(x, tf.float32)
    mean = df[[f"z_mean_{i}" for i in range(LATENT_DIM)]].to_numpy()
    std = df[[f"z_std_{i}" for i in range(LATENT_DIM)]].to_numpy()
    # splits=(test,) -> split index 0; one part file -> part index 0; default seed 0.
    eps = np.random.default_rng([0, 0, 0, 1]).standard_normal((1, *mean.shape), np.float32)
    z = tf.constant(mean + std * eps[0], tf.float32)
    kl = 0.5 * np.sum(mean**2 + std**2 - 1 - np.log(std**2), axis=1)
    expected = vae.likelihood(z).log_prob(x).numpy() - kl
    np.testing.assert_allclose(df["elbo"].to_numpy(), expected, rtol=1e-4, atol=1e-3)


def test_log_px_is_the_importance_sampled_log_marginal(registered, scored):
    """Against the evaluate stage's IS estimator with other seeds and 4x the samples."""
    from models.saved import load_vae
    from tasks.scoring import evaluate_split
    from tasks.store import datasets

    root = registered["root"]
    manifest = datasets.load_manifest(root, "digits-batch")
    ev = evaluate_split(
        load_vae(registered["saved"]), root, manifest, C.TEST, num_samples=2000, seed=11
    )
    df = _read(scored.path).set_index(C.COL_ID).loc[list(ev.ids)]
    diff = df["log_px"].to_numpy() - ev.per_point["log_marginal"]
    assert np.median(np.abs(diff)) < 0.5
    assert np.corrcoef(df["log_px"], ev.per_point["log_marginal"])[0, 1] > 0.99
    # IS with K samples is a tighter bound than the ELBO (Jensen), here estimated with K draws...
    assert df["log_px"].mean() > ev.per_point["elbo_b"].mean()
    # ... of which the one-draw `elbo` column is an unbiased estimate.
    noise = df["elbo"].to_numpy() - ev.per_point["elbo_b"]
    assert abs(noise.mean()) < 4 * noise.std() / np.sqrt(len(noise))


def test_scores_are_reproducible_and_a_different_setting_replaces_the_table(registered, scored):
    from tasks.export import score_dataset

    before = _read(scored.path)
    again = score_dataset(registered["uri"], "digits-batch", registered["root"], **SCORING)
    assert not again.created
    rebatched = score_dataset(
        registered["uri"],
        "digits-batch",
        registered["root"],
        splits=(C.TEST,),
        log_px_samples=0,
        batch_size=17,
    )
    df = _read(rebatched.path)
    assert rebatched.created and rebatched.path == scored.path and "log_px" not in df.columns
    np.testing.assert_allclose(df["elbo"], before["elbo"], rtol=1e-5, atol=1e-4)  # batch-free
    back = score_dataset(
        registered["uri"],
        "digits-batch",
        registered["root"],
        splits=(C.TEST,),
        log_px_samples=500,
        batch_size=64,
    )
    np.testing.assert_array_equal(_read(back.path)["log_px"], before["log_px"])


def test_export_writes_elbo_always_and_log_px_when_asked(registered):
    from tasks.export import export_latents

    plain = export_latents(registered["uri"], "digits", registered["root"], splits=(C.TEST,))
    cols = list(_read(plain.path).columns)
    assert "elbo" in cols and "log_px" not in cols
    with_px = export_latents(
        registered["uri"], "digits", registered["root"], splits=(C.TEST,), log_px_samples=20
    )
    df = _read(with_px.path)
    assert with_px.created and with_px.path == plain.path and df["log_px"].notna().all()
    assert Path(with_px.path).parts[-4:] == ("latents", "digits", "aevb-digits", "v1")
    manifest = json.loads(Path(f"{with_px.path}.manifest.json").read_text())
    assert manifest["log_px_samples"] == 20 and manifest["schema_version"] == 2


def test_export_without_elbo_writes_the_same_codes_and_log_px_and_nothing_else(registered):
    """export.elbo = false: a table of codes only (no decoder pass); the codes, and log_px when
    asked, are those of the table with elbo, to the bit; the setting is part of the table key."""
    from tasks.export import export_latents

    root, uri = registered["root"], registered["uri"]
    with_both = export_latents(uri, "digits", root, splits=(C.TEST,), log_px_samples=20)
    full = _read(with_both.path)
    codes = export_latents(uri, "digits", root, splits=(C.TEST,), elbo=False)
    df = _read(codes.path)
    z_cols = [f"{p}{i}" for p in (C.Z_MEAN_PREFIX, C.Z_STD_PREFIX) for i in range(LATENT_DIM)]
    assert codes.created and codes.path == with_both.path
    assert list(df.columns) == [C.COL_ID, C.COL_SPLIT, C.COL_LABEL, *z_cols]
    assert list(df[C.COL_ID]) == list(full[C.COL_ID])
    np.testing.assert_array_equal(df[z_cols].to_numpy(), full[z_cols].to_numpy())
    manifest = json.loads(Path(f"{codes.path}.manifest.json").read_text())
    assert manifest["elbo"] is False and manifest["columns"] == list(df.columns)
    assert not export_latents(uri, "digits", root, splits=(C.TEST,), elbo=False).created
    px_only = export_latents(uri, "digits", root, splits=(C.TEST,), log_px_samples=20, elbo=False)
    got = _read(px_only.path)
    assert px_only.created and "elbo" not in got.columns
    np.testing.assert_array_equal(got["log_px"].to_numpy(), full["log_px"].to_numpy())


def test_a_table_written_before_the_elbo_setting_is_still_up_to_date(registered):
    """Manifests of earlier releases have no "elbo" key; all of them had the column."""
    from tasks.export import export_latents

    root, uri = registered["root"], registered["uri"]
    first = export_latents(uri, "digits", root, splits=(C.TEST,))
    manifest_file = Path(f"{first.path}.manifest.json")
    doc = json.loads(manifest_file.read_text())
    del doc["elbo"]
    manifest_file.write_text(json.dumps(doc))
    assert not export_latents(uri, "digits", root, splits=(C.TEST,)).created
    assert export_latents(uri, "digits", root, splits=(C.TEST,), elbo=False).created


def test_bad_inputs_are_refused_in_one_line_with_nothing_written(registered, tmp_path):
    from models.errors import ConfigError, DatasetError
    from tasks.export import export_latents, score_dataset
    from tests.tasks._mlflow_helpers import write_dataset

    root = registered["root"]
    with pytest.raises(ConfigError, match=r"^log_px_samples=-1 must be an integer >= 0"):
        score_dataset(registered["uri"], "digits-batch", root, log_px_samples=-1)
    with pytest.raises(ConfigError, match=r"^log_px_samples=True must be an integer"):
        export_latents(registered["uri"], "digits", root, log_px_samples=True)
    with pytest.raises(ConfigError, match=r"^elbo='no' must be true or false"):
        export_latents(registered["uri"], "digits", root, elbo="no")
    write_dataset(root, "other-shape", feature_shape=(4, 4))
    with pytest.raises(
        DatasetError,
        match=r"rows have feature_shape \[4, 4\] \(16 values\) but "
        r"model_uri='models:/aevb-digits@champion' reads \[8, 8\] \(64\)",
    ):
        score_dataset(registered["uri"], "other-shape", root, log_px_samples=0)
    assert not (Path(root) / "scores" / "other-shape").exists()


def test_the_score_verb_writes_the_table_for_a_dataset_version(prefect_harness, registered):
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = [
        "score",
        "--model",
        registered["uri"],
        "--dataset",
        "digits",
        "--version",
        registered["digits_version"],
        "--splits",
        "valid",
        "--log-px-samples",
        "10",
        "--data-root",
        registered["root"],
    ]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(argv) == 0
    path = Path(
        registered["root"], "scores", "digits", "aevb-digits", "v1", registered["digits_version"]
    )
    assert out.getvalue().startswith(f"score table: {path} (180 rows; elbo, log_px)")
    df = _read(str(path))
    assert set(df[C.COL_SPLIT]) == {C.VALID} and df["log_px"].notna().all()


def test_the_export_verb_without_elbo_writes_codes_only(prefect_harness, registered):
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = ["export", "--model", registered["uri"], "--dataset", "digits", "--splits", "valid",
            "--no-elbo", "--data-root", registered["root"]]  # fmt: skip
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(argv) == 0
    path = Path(registered["root"], "latents", "digits", "aevb-digits", "v1")
    assert out.getvalue().startswith(f"latent table: {path} (180 rows)")
    df = _read(str(path))
    assert set(df[C.COL_SPLIT]) == {C.VALID} and len(df) == 180
    assert not {"elbo", "log_px"} & set(df.columns) and "z_std_0" in df.columns
