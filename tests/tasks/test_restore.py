"""Restoration with a registry model trained here on digits (the issue's quality checks).

PSNR is recomputed in numpy from the published Parquet table and the clean dataset, so each check
also verifies the table (ids, order, values) and the reported metrics. Weak baselines are computed
here independently (mean imputation, the noisy input, nearest-neighbour upsampling) for the quality
checks; the strong ones (models/restoration_baselines.py, tested on closed forms in
tests/models/test_restoration_baselines.py) are applied to the stored data and must equal what the
restoration reports, with the margin = model - best baseline.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C
from models.errors import ConfigError, DatasetError, ModelError
from tests.tasks._restore_helpers import registered_digits_model, use_store


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tasks.corrupt import corrupt_dataset

    with use_store(registered_digits_model(tmp_path_factory)) as info:
        root = info["root"]
        for kind in ("inpaint", "denoise", "superres", "salt-pepper"):
            corrupt_dataset("digits", kind, data_root=root, seed=11)
        yield info


def _restore(env, dataset, method, **kw):
    from tasks.restore import restore_dataset

    return restore_dataset(env["uri"], dataset, method, env["root"], **kw)


def _table(path, split=C.TEST):
    df = pq.read_table(os.path.join(path, f"part-{split}-00000.parquet")).to_pandas()
    return list(df[C.COL_ID]), np.stack(df[C.COL_X].to_numpy()).astype(np.float32)


def _clean(env, name="digits", split=C.TEST):
    from tasks.store import readers

    ids, x, _ = readers.read_split(env["root"], name, None, split)
    return list(ids), x


def _psnr(x, ref):  # value range [0, 1]: peak 1
    return float(np.mean(-10 * np.log10(np.mean((x - ref) ** 2, axis=1))))


def _checked_baselines(env, out, dataset, **spec_kw):
    """Every reported baseline equals that baseline applied here to the stored degraded rows; the
    best and the margins follow from them. Returns {baseline name: PSNR}."""
    from models.degradations import DegradationSpec
    from models.restoration_baselines import baselines, slug

    _, y = _clean(env, dataset)
    mask = _clean(env, f"{dataset}.mask")[1] if spec_kw.get("kind") == "inpaint" else None
    _, clean = _clean(env)
    spec = DegradationSpec(feature_shape=(8, 8), **spec_kw)
    fns = baselines(spec)
    assert out.baselines == list(fns)
    # per-row MSE floored at 1e-12 as in models.degradations.psnr: a row with no corrupted pixel
    # (salt-and-pepper) is restored exactly by the identity
    err = {name: np.mean((fn(y, mask) - clean) ** 2, axis=1) for name, fn in fns.items()}
    got = {name: float(np.mean(-10 * np.log10(np.maximum(e, 1e-12)))) for name, e in err.items()}
    for name, value in got.items():
        assert out.metrics[f"test_baseline_{slug(name)}_psnr"] == pytest.approx(value, abs=1e-3)
    best = max(got, key=got.get)
    assert out.baseline == best
    assert out.metrics["test_baseline_psnr"] == pytest.approx(got[best], abs=1e-3)
    assert out.metrics["test_margin_psnr"] == pytest.approx(
        out.metrics["test_psnr"] - got[best], abs=1e-3
    )
    return got


def _checked_psnr(env, out):
    """PSNR of the published table vs the clean rows; equals the reported number."""
    ids, x = _table(out.path)
    clean_ids, clean = _clean(env)
    assert ids == clean_ids and out.rows == len(ids)
    value = _psnr(x, clean)
    assert out.metrics["test_psnr"] == pytest.approx(value, abs=1e-3)
    return value, x


@pytest.fixture(scope="module")
def inpaint(env):
    _, y = _clean(env, "digits-inpaint")
    _, mask = _clean(env, "digits-inpaint.mask")
    return y, mask, {m: _restore(env, "digits-inpaint", m) for m in ("amortized", "map")}


def test_inpainting_half_the_pixels_beats_mean_imputation(env, inpaint):
    y, mask, outs = inpaint
    _, clean = _clean(env)
    assert abs((1 - mask).mean() - 0.5) < 0.05
    means = (y * mask).sum(0) / np.maximum(mask.sum(0), 1)  # per-pixel mean of observed entries
    baseline = _psnr(mask * y + (1 - mask) * means, clean)
    strong = _checked_baselines(env, outs["map"], "digits-inpaint", kind="inpaint")
    assert list(strong) == ["mean imputation", "nearest neighbour", "harmonic", "biharmonic"]
    assert strong["mean imputation"] == pytest.approx(baseline, abs=1e-3)
    value, x = _checked_psnr(env, outs["map"])
    assert value > baseline + 1.0
    np.testing.assert_array_equal(x[mask == 1], y[mask == 1])  # observed pixels kept


def test_latent_map_is_at_least_as_good_as_amortized_on_inpainting(env, inpaint):
    _, _, outs = inpaint
    amortized, _ = _checked_psnr(env, outs["amortized"])
    map_, _ = _checked_psnr(env, outs["map"])
    assert map_ >= amortized


@pytest.mark.parametrize("method", ["pseudo-gibbs", "mwg"])
def test_samplers_keep_observed_pixels_and_beat_mean_imputation(env, inpaint, method):
    y, mask, _ = inpaint
    out = _restore(env, "digits-inpaint", method, settings=_fast())
    value, x = _checked_psnr(env, out)
    np.testing.assert_array_equal(x[mask == 1], y[mask == 1])
    _, clean = _clean(env)
    means = (y * mask).sum(0) / np.maximum(mask.sum(0), 1)
    assert value > _psnr(mask * y + (1 - mask) * means, clean) + 1.0
    if method == "mwg":
        rate = out.diagnostics["acceptance_rate"]
        assert 0.0 < rate <= 1.0
        assert bool(out.warnings) == (rate < 0.10)


def _fast():
    from tasks.restore import RestoreSettings

    return RestoreSettings(iterations=100, burn_in=25)


def test_denoising_beats_the_noisy_input(env):
    from tasks.store import datasets as ds

    out = _restore(env, "digits-denoise", "map")
    _, noisy = _clean(env, "digits-denoise")
    _, clean = _clean(env)
    baseline = _psnr(noisy, clean)
    clipped = _psnr(np.clip(noisy, 0.0, 1.0), clean)  # clipping alone helps on digits
    assert out.metrics["test_baseline_clipped_noisy_input_psnr"] == pytest.approx(clipped, abs=1e-3)
    _checked_baselines(env, out, "digits-denoise", kind="gaussian", noise_std=0.2)
    value, _ = _checked_psnr(env, out)
    assert value > baseline + 1.0
    assert ds.load_manifest(env["root"], "digits-denoise").source["degradation"][
        "noise_std"
    ] == pytest.approx(0.2)


def test_denoising_with_an_estimated_noise_level(env):
    from tasks.restore import RestoreSettings

    out = _restore(env, "digits-denoise", "map", settings=RestoreSettings(estimate_noise=True))
    # the joint MAP level also absorbs the model's own reconstruction error: above the true 0.2
    assert 0.2 <= out.diagnostics["noise_std"] < 0.3
    _, noisy = _clean(env, "digits-denoise")
    assert out.metrics["test_psnr"] > _psnr(noisy, _clean(env)[1]) + 1.0
    assert "Wiener 3x3" not in out.baselines  # the level is not known to the baselines either


def test_superresolution_2x_beats_nearest_neighbour_upsampling(env):
    out = _restore(env, "digits-superres", "map")
    _, low = _clean(env, "digits-superres")
    _, clean = _clean(env)
    nearest = np.repeat(np.repeat(low.reshape(-1, 4, 4), 2, 1), 2, 2).reshape(-1, 64)
    baseline = _psnr(nearest, clean)
    assert out.metrics["test_baseline_nearest_upsampling_psnr"] == pytest.approx(baseline, abs=1e-3)
    _checked_baselines(env, out, "digits-superres", kind="superres", noise_std=0.05)
    value, x = _checked_psnr(env, out)
    assert value > baseline + 1.0
    # the restored image explains the observation: its pooled values are close to y
    pooled = x.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)
    assert np.abs(pooled - low).mean() < np.abs(nearest - clean).mean()


def test_salt_and_pepper_beats_the_corrupted_input(env):
    out = _restore(env, "digits-salt-pepper", "amortized")
    value, _ = _checked_psnr(env, out)
    assert value > out.metrics["test_baseline_corrupted_input_psnr"] + 0.5
    _checked_baselines(env, out, "digits-salt-pepper", kind="salt_pepper", amount=0.1)


def test_layout_idempotence_provenance_and_mlflow_metrics(env, inpaint):
    from tasks import tracking

    first = inpaint[2]["map"]
    assert first.path.endswith(
        os.path.join("restored", "digits-inpaint", "aevb-digits", "v1", "map")
    )
    again = _restore(env, "digits-inpaint", "map")
    assert not again.created and again.metrics == first.metrics
    meta = pq.read_schema(os.path.join(first.path, "part-test-00000.parquet")).metadata
    assert (
        b"aevb.restore" in meta
        and pq.read_schema(os.path.join(first.path, "part-test-00000.parquet"))
        .field(C.COL_X)
        .type.list_size
        == 64
    )
    logged = tracking.client().get_run(env["run_id"]).data.metrics
    assert logged["test_restore_inpaint_map_psnr"] == pytest.approx(first.metrics["test_psnr"])
    assert logged["test_restore_inpaint_map_baseline_psnr"] == pytest.approx(
        first.metrics["test_baseline_psnr"]
    )
    assert logged["test_restore_inpaint_map_margin_psnr"] == pytest.approx(
        first.metrics["test_margin_psnr"]
    )
    tags = tracking.client().get_run(env["run_id"]).data.tags
    assert tags["aevb.restore_inpaint_map.best_baseline"] == first.baseline


def test_from_latents_decodes_z_mean_with_the_model(env):
    import pandas as pd

    from models.saved import load_vae
    from tasks.export import export_latents
    from tasks.restore import decode_latents

    table = export_latents(env["uri"], "digits", env["root"], splits=("valid", "test"))
    out = decode_latents(env["uri"], table.path, env["root"], batch_size=64)
    assert out.rows == table.rows and out.path.endswith(os.path.join("v1", "from-latents"))
    latents = pq.read_table(table.path, ignore_prefixes=["manifest", ".", "_"]).to_pandas()
    decoded = pq.read_table(out.path, ignore_prefixes=["manifest", ".", "_"]).to_pandas()
    merged = pd.merge(latents, decoded, on=[C.COL_ID, C.COL_SPLIT], validate="one_to_one")
    assert len(merged) == table.rows
    z = merged[[f"z_mean_{i}" for i in range(8)]].to_numpy(np.float32)
    want = load_vae(env["saved"]).decode_mean(z).numpy()
    np.testing.assert_allclose(np.stack(merged[C.COL_X].to_numpy()), want, rtol=1e-5, atol=1e-6)
    assert not decode_latents(env["uri"], table.path, env["root"]).created


def _plain_dataset(root, name, shape):
    from tasks.store.writer import DatasetWriter

    rng = np.random.default_rng(0)
    w = DatasetWriter(root, name, feature_shape=shape, storage_dtype="float32", scale=1.0,
                               split_seed=0, source={"kind": "test"})  # fmt: skip
    with w:
        w.write(C.TEST, [f"r{i}" for i in range(5)], rng.uniform(size=(5, *shape)), None)
        w.commit()


@pytest.mark.parametrize(
    "dataset, kwargs, error, match",
    [
        ("digits-inpaint", {"method": "gibbs"}, ConfigError, "method='gibbs' is not known"),
        ("digits-denoise", {"method": "mwg"}, ConfigError, "applies to inpainting only"),
        ("nope", {}, DatasetError, "dataset 'nope' not found"),
        ("plain-4x4", {"kind": "denoise"}, DatasetError, r"feature_shape \[4, 4\] does not match"),
        ("plain-4x4", {}, ConfigError, "`kind`: dataset 'plain-4x4' was not made by"),
        ("plain-8x8", {"kind": "inpaint"}, ConfigError, "`mask`: inpainting 'plain-8x8' needs"),
        ("digits-inpaint", {"kind": "denoise"}, ConfigError, "drop `kind`"),
        ("digits-inpaint", {"splits": ("training",)}, DatasetError, "unknown split 'training'"),
        (
            "digits-inpaint",
            {"model": "models:/nope@champion"},
            ModelError,
            "model_uri='models:/nope",
        ),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(env, dataset, kwargs, error, match):
    from tasks.restore import restore_dataset

    _plain_dataset(env["root"], "plain-4x4", (4, 4))
    _plain_dataset(env["root"], "plain-8x8", (8, 8))
    restored = os.path.join(env["root"], "restored")
    before = sorted(os.walk(restored)) if os.path.isdir(restored) else []
    kw = {"method": "map", **kwargs}
    uri = kw.pop("model", env["uri"])
    with pytest.raises(error, match=match) as exc:
        restore_dataset(uri, dataset, data_root=env["root"], **kw)
    assert "\n" not in str(exc.value)
    assert (sorted(os.walk(restored)) if os.path.isdir(restored) else []) == before


def test_a_before_after_picture_is_published_beside_the_table_and_logged_to_the_run(env, inpaint):
    from PIL import Image

    from tasks import tracking

    first = inpaint[2]["map"]
    assert first.picture == f"{first.path}.before-after.png" and os.path.isfile(first.picture)
    with Image.open(first.picture) as img:
        assert img.format == "PNG" and img.size[1] > img.size[0]  # 8 rows of 3 pictures
    assert sorted(os.listdir(first.path)) == ["part-test-00000.parquet"]  # the folder: Parquet only
    assert first.picture_artifact == f"runs:/{env['run_id']}/restore/digits-inpaint/map.png"
    assert first.baseline_picture == f"{first.path}.baseline.png"
    with Image.open(first.baseline_picture) as img:
        assert img.format == "PNG"
    logged = tracking.list_artifacts(env["run_id"], "restore/digits-inpaint")
    assert {"restore/digits-inpaint/map.png", "restore/digits-inpaint/map.baseline.png"} <= set(
        logged
    )
    again = _restore(env, "digits-inpaint", "map")  # a no-op still names the pictures
    assert not again.created and again.picture == first.picture
    assert again.baseline_picture == first.baseline_picture


def test_super_resolution_pictures_keep_the_small_input(env):
    out = _restore(env, "digits-superres", "amortized", log_to_mlflow=False)
    assert os.path.isfile(out.picture) and out.picture_artifact is None


def test_restore_logs_progress_with_rows_rate_and_eta(env, caplog, monkeypatch):
    from tasks.restore import RestoreSettings

    monkeypatch.setenv("AEVB_PROGRESS_SECONDS", "0")  # a line per batch
    with caplog.at_level("INFO"):
        _restore(env, "digits-denoise", "amortized", settings=RestoreSettings(batch_size=50))
    lines = [r.getMessage() for r in caplog.records if "restore[amortized]" in r.getMessage()]
    counts = [int(ln.split(": ")[1].split("/")[0]) for ln in lines]
    assert counts == [50, 100, 150, 180], lines  # 180 test rows in batches of 50
    assert all("/180 rows" in ln and "rows/s" in ln and "ETA" in ln for ln in lines)


def test_settings_that_change_the_result_never_overwrite_each_other(env):
    from tasks.restore import RestoreSettings

    known = _restore(env, "digits-denoise", "map")
    manifest = f"{known.path}.manifest.json"
    with open(manifest, "rb") as fh:
        before = fh.read()
    estimated = _restore(
        env, "digits-denoise", "map", settings=RestoreSettings(estimate_noise=True)
    )
    fewer = _restore(env, "digits-denoise", "map", settings=RestoreSettings(map_steps=20))
    assert (
        estimated.path == f"{known.path}-estimate-noise" and fewer.path == f"{known.path}-steps20"
    )
    with open(manifest, "rb") as fh:
        assert fh.read() == before  # the known-sigma table is untouched
    for out in (known, estimated, fewer):
        assert os.path.isfile(os.path.join(out.path, "part-test-00000.parquet"))
    assert _table(estimated.path)[1].tolist() != _table(known.path)[1].tolist()
    again = _restore(env, "digits-denoise", "map")
    assert not again.created and again.metrics == known.metrics


def test_low_mwg_acceptance_warns_in_the_log_the_output_and_the_run(env, caplog, monkeypatch):
    from tasks import restore_scores, tracking
    from tasks.restore import RestoreSettings

    # Every real acceptance rate is below a threshold of 101 %: the warning path, end to end.
    monkeypatch.setattr(restore_scores, "LOW_ACCEPTANCE", 1.01)
    settings = RestoreSettings(iterations=30, burn_in=5, seed=7)
    with caplog.at_level("WARNING"):
        out = _restore(env, "digits-inpaint", "mwg", settings=settings)
    rate = out.diagnostics["acceptance_rate"]
    assert out.path.endswith("mwg-iter30-burn5-seed7") and len(out.warnings) == 1
    assert f"accepted {rate:.1%}" in out.warnings[0]
    lines = [r.getMessage() for r in caplog.records if "proposals" in r.getMessage()]
    assert lines == [f"restore: {out.warnings[0]}"]
    run = tracking.client().get_run(env["run_id"]).data
    prefix = "restore_inpaint_mwg_iter30_burn5_seed7"
    assert run.tags[f"aevb.{prefix}.low_acceptance"] == "true"
    assert run.metrics[f"{prefix}_acceptance_rate"] == pytest.approx(rate)
