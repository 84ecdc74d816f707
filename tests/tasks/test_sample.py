"""Generation from the registry (`tasks/sample.py`): shapes, values in each likelihood's support,
the decoder means against the SavedModel, seeding down to the bytes, MLflow logging."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.tasks._mlflow_helpers import save_untrained_model

SHAPE = (6, 5)
D = 30


def _register(
    tmp: Path, name: str, likelihood: str, latent_dim: int, shape: tuple[int, ...] = SHAPE
) -> dict:
    """An untrained model of ``likelihood`` logged as a pyfunc and registered as version 1."""
    from models.config import ModelConfig
    from models.saved import save_model
    from models.vae import VAE
    from tasks import tracking

    if likelihood == "bernoulli" and latent_dim == 2 and shape == SHAPE:
        saved = save_untrained_model(tmp / name, SHAPE, latent_dim)
    else:
        cfg = ModelConfig(
            feature_shape=shape, latent_dim=latent_dim, hidden_sizes=(16,), likelihood=likelihood
        )
        saved = save_model(VAE(cfg, seed=1), str(tmp / name))
    run_id = tracking.start_run("aevb-sample-tests", run_name=name)
    dim = int(np.prod(shape))
    logged = tracking.log_pyfunc_model(run_id, saved, np.zeros((2, dim), np.float32))
    version = tracking.register_model(logged, name, run_id)
    return {"uri": f"models:/{name}/{version.version}", "run_id": run_id, "saved": saved}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    out = {"root": str(tmp / "data")}
    for name, likelihood, k in (
        ("m-bernoulli", "bernoulli", 2),
        ("m-gaussian", "gaussian", 2),
        ("m-cb", "continuous_bernoulli", 2),
        ("m-bernoulli-3d", "bernoulli", 3),
    ):
        out[name] = _register(tmp, name, likelihood, k)
    out["m-vectors"] = _register(tmp, "m-vectors", "gaussian", 2, shape=(12,))
    yield out
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


def _sample(models, name: str, root: str | None = None, **kw):
    from tasks.sample import sample_model

    return sample_model(models[name]["uri"], data_root=root or models["root"], **kw)


def _bytes(path: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir())}


def test_shapes_files_and_layout_with_a_2d_latent_space(models):
    from tasks.sample import read_samples

    out = _sample(models, "m-bernoulli", num_samples=64, draws=True, seed=5)
    assert out.created and out.rows == 64
    assert Path(out.path).parts[-4:] == ("samples", "m-bernoulli", "v1", "seed5-n64-draws")
    assert out.files == ("grid.png", "grid_draws.png", "manifold.png", "samples.parquet")
    assert sorted(os.listdir(out.path)) == list(out.files)
    for f in out.files[:3]:
        assert (Path(out.path) / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got = read_samples(out.path)
    assert got["z"].shape == (64, 2) and got["z"].dtype == np.float32
    assert got["x_mean"].shape == (64, D) and got["x_draw"].shape == (64, D)
    manifest = json.loads(Path(f"{out.path}.manifest.json").read_text())
    assert manifest["rows"] == 64 and manifest["files"] == list(out.files)
    assert manifest["model_uri"] == models["m-bernoulli"]["uri"] and manifest["seed"] == 5


def test_no_manifold_without_a_2d_latent_space_and_no_draws_unless_asked(models):
    from tasks.sample import read_samples

    out = _sample(models, "m-bernoulli-3d", num_samples=10)
    assert out.files == ("grid.png", "samples.parquet")
    got = read_samples(out.path)
    assert got["z"].shape == (10, 3) and "x_draw" not in got


def test_vectors_get_profile_pictures(models):
    """Non-image data: per-feature profiles instead of a mosaic, and a manifold of profiles."""
    from tasks.sample import read_samples

    out = _sample(models, "m-vectors", num_samples=8, manifold_size=4)
    assert out.files == ("grid.png", "manifold.png", "samples.parquet")
    assert read_samples(out.path)["x_mean"].shape == (8, 12)


def test_decoder_means_are_the_saved_models_decode_signature(models):
    from models.saved import load_serving
    from tasks.sample import read_samples

    got = read_samples(_sample(models, "m-gaussian", num_samples=20).path)
    serving = load_serving(models["m-gaussian"]["saved"])
    want = serving.signatures["decode"](z=got["z"])["x_mean"].numpy()
    np.testing.assert_allclose(got["x_mean"], want, rtol=1e-6, atol=1e-6)
    z = got["z"]  # N(0, I) draws: loose moment checks on 40 numbers
    assert abs(z.mean()) < 0.7 and 0.5 < z.std() < 1.5


@pytest.mark.parametrize(
    "name,draws_in",
    [("m-bernoulli", "binary"), ("m-cb", "unit"), ("m-gaussian", "real")],
)
def test_values_lie_in_the_likelihoods_support(models, name, draws_in):
    from tasks.sample import read_samples

    got = read_samples(_sample(models, name, num_samples=300, draws=True, seed=2).path)
    mean, draw = got["x_mean"], got["x_draw"]
    assert np.isfinite(mean).all() and np.isfinite(draw).all()
    assert mean.min() >= 0.0 and mean.max() <= 1.0  # all three decoders' means lie in [0, 1]
    if draws_in == "binary":
        assert set(np.unique(draw)) <= {0.0, 1.0} and 0 < draw.mean() < 1
    elif draws_in == "unit":
        assert draw.min() >= 0.0 and draw.max() <= 1.0 and len(np.unique(draw)) > 100
    else:  # Gaussian draws: mean + std * eps, unbounded; centred on the means
        assert draw.min() < 0.0 or draw.max() > 1.0
        assert abs((draw - mean).mean()) < 0.2


def test_same_seed_same_bytes_other_seed_other_samples(models, tmp_path):
    from tasks.sample import read_samples

    a = _sample(models, "m-bernoulli", root=str(tmp_path / "a"), num_samples=50, draws=True)
    b = _sample(models, "m-bernoulli", root=str(tmp_path / "b"), num_samples=50, draws=True)
    assert _bytes(a.path) == _bytes(b.path)  # table and every picture, byte for byte
    c = _sample(models, "m-bernoulli", root=str(tmp_path / "a"), num_samples=50, draws=True, seed=1)
    ba, bc = _bytes(a.path), _bytes(c.path)
    assert all(ba[f] != bc[f] for f in ba if f != "manifold.png")
    assert ba["manifold.png"] == bc["manifold.png"]  # a fixed grid of z: it shows the model
    za, zc = read_samples(a.path)["z"], read_samples(c.path)["z"]
    assert not np.allclose(za, zc)
    # a smaller N with the same seed is the first rows of the larger one
    small = _sample(models, "m-bernoulli", root=str(tmp_path / "a"), num_samples=7)
    np.testing.assert_array_equal(read_samples(small.path)["z"], za[:7])


def test_logged_to_the_models_mlflow_run_and_idempotent(models):
    from tasks import tracking

    out = _sample(models, "m-cb", num_samples=16)
    run_id = models["m-cb"]["run_id"]
    assert out.run_id == run_id and out.artifact_path == "samples/seed0-n16"
    logged = tracking.list_artifacts(run_id, out.artifact_path)
    assert [p.rsplit("/", 1)[1] for p in logged] == list(out.files)
    before = _bytes(out.path)
    again = _sample(models, "m-cb", num_samples=16)
    assert not again.created and _bytes(again.path) == before


def test_bad_settings_are_refused_naming_the_setting(models):
    from models.errors import ConfigError

    for kw, message in (
        ({"num_samples": 0}, r"sample.num_samples=0 must be an integer in \[1, 100,000\]"),
        ({"seed": -1}, r"sample.seed=-1 must be an integer in \[0, 2,147,483,647\]"),
        ({"draws": "yes"}, r"sample.draws='yes' must be true or false"),
        ({"manifold_size": 1}, r"sample.manifold_size=1 must be an integer in \[2, 50\]"),
    ):
        with pytest.raises(ConfigError, match=message):
            _sample(models, "m-bernoulli", **kw)
    assert not (Path(models["root"]) / "samples" / "m-bernoulli" / "v1" / "seed0-n0").exists()


def test_the_sample_flow_runs_in_prefect(prefect_harness, models):
    from flows.stages import sample_flow

    out = sample_flow(models["m-gaussian"]["uri"], 9, 3, True, 4, models["root"])
    assert out.rows == 9 and "manifold.png" in out.files
    assert Path(out.path).name == "seed3-n9-draws"
