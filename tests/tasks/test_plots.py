"""Plots: the geometry behind them against closed forms, and the files a run gets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from models import constants as C
from tasks import plots
from tests.tasks._mlflow_helpers import write_dataset


@pytest.mark.parametrize(
    ("feature_shape", "expected"),
    [
        ((8, 8), (8, 8)),
        ((28, 28, 1), (28, 28)),
        ((32, 32, 3), (32, 32, 3)),
        ((784,), (28, 28)),
        ((64,), (8, 8)),
        ((16,), None),  # a square, but too small to be a picture: tabular
        ((10,), None),
        ((4, 4, 7), None),
    ],
)
def test_image_shape_tells_pictures_from_tabular_data(feature_shape, expected):
    assert plots.image_shape(feature_shape) == expected


def test_tile_puts_image_i_in_row_i_div_cols_and_column_i_mod_cols():
    rng = np.random.default_rng(0)
    images = rng.random((5, 3, 4)).astype(np.float32)
    mosaic = plots.tile(images, cols=2, pad=1, pad_value=-1.0)
    assert mosaic.shape == (3 * 3 + 2, 2 * 4 + 1)
    for i in range(5):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(mosaic[r * 4 : r * 4 + 3, c * 5 : c * 5 + 4], images[i])
    assert (mosaic[8:, 5:] == -1.0).all()  # the sixth cell is empty
    assert (mosaic[3, :] == -1.0).all() and (mosaic[:, 4] == -1.0).all()  # padding lines


def test_manifold_grid_is_the_inverse_normal_cdf_of_an_even_grid():
    n = 4
    z = plots.manifold_latents(n)
    assert z.shape == (n * n, 2) and z.dtype == np.float32
    u = (np.arange(n) + 0.5) / n
    phi = 0.5 * (1.0 + np.vectorize(math.erf)(z.astype(np.float64) / math.sqrt(2.0)))
    np.testing.assert_allclose(phi[:n, 0], u, atol=1e-6)  # first row sweeps z_1 left to right
    np.testing.assert_allclose(phi[::n, 1], u[::-1], atol=1e-6)  # z_2 decreases down the rows
    assert z[0, 0] == pytest.approx(-1.1503494, abs=1e-6)  # Phi^-1(1/8)
    np.testing.assert_allclose(z[:n, 0], -z[:n, 0][::-1], atol=1e-6)  # symmetric about 0


def test_principal_components_are_the_top_eigenvectors_of_the_sample_covariance():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    z = (rng.standard_normal((5000, 4)) * np.array([3.0, 2.0, 0.5, 0.1])) @ q.T + 7.0
    scores, ratio = plots.principal_components(z)
    evals = np.linalg.eigh(np.cov(z, rowvar=False))[0][::-1]
    np.testing.assert_allclose(np.var(scores, axis=0, ddof=1), evals[:2], rtol=1e-8)
    assert abs(np.corrcoef(scores, rowvar=False)[0, 1]) < 1e-8  # uncorrelated scores
    np.testing.assert_allclose(ratio, evals[:2] / evals.sum(), rtol=1e-8)
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-9)


@pytest.mark.parametrize(
    ("feature_shape", "latent_dim", "expected"),
    [
        ((8, 8), 2, set(plots.PLOT_FILES)),
        ((10,), 3, set(plots.PLOT_FILES) - {"manifold.png"}),
        ((5,), 2, set(plots.PLOT_FILES)),
    ],
)
def test_write_training_plots_writes_the_expected_pngs(
    tmp_path, feature_shape, latent_dim, expected
):
    from models.config import ModelConfig
    from models.vae import VAE

    vae = VAE(ModelConfig(feature_shape=feature_shape, latent_dim=latent_dim, hidden_sizes=(16,)))
    rng = np.random.default_rng(0)
    x = (rng.random((50, math.prod(feature_shape))) < 0.5).astype(np.float32)
    labels = rng.integers(-1, 3, 50)
    history = [
        {"epoch": 1, C.TRAIN_ELBO: -9.0, C.VALID_ELBO: -8.5, C.TRAIN_KL: 1.0},
        {"epoch": 2, C.TRAIN_ELBO: -8.0, C.VALID_ELBO: -8.1, C.TRAIN_KL: 1.5},
    ]
    paths = plots.write_training_plots(vae, x, labels, history, str(tmp_path / "plots"))
    assert {p.rsplit("/", 1)[-1] for p in paths} == expected
    assert {p.name for p in (tmp_path / "plots").iterdir()} == expected
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and min(im.size) > 100
            assert np.asarray(im.convert("L")).std() > 0  # something was drawn


def test_learning_curves_draw_only_the_panels_a_run_recorded(tmp_path):
    aevb = [{"epoch": 1, C.TRAIN_ELBO: -9.0, C.VALID_ELBO: -8.5, C.TRAIN_KL: 1.0, C.VALID_KL: 1.1}]
    full_vb = [{"epoch": 1, C.TRAIN_ELBO: -9.0, C.TRAIN_KL_THETA: 300.0, C.VALID_ELBO: -8.0}]
    no_valid = [{"epoch": 1, C.TRAIN_ELBO: -9.0, C.VALID_ELBO: math.nan}]
    assert [keys for _, keys in plots.learning_curve_panels(aevb)] == [
        [C.TRAIN_ELBO, C.VALID_ELBO],
        [C.TRAIN_KL, C.VALID_KL],
    ]
    # full VB logs no KL(q(z|x)) during training: no empty KL panel, but its KL(theta)
    panels = plots.learning_curve_panels(full_vb)
    assert [keys for _, keys in panels] == [[C.TRAIN_ELBO, C.VALID_ELBO], [C.TRAIN_KL_THETA]]
    assert "theta" in panels[1][0]
    assert plots.learning_curve_panels(no_valid) == [(plots.LEARNING_PANELS[0][0], [C.TRAIN_ELBO])]
    widths = {}
    for name, history in (("aevb", aevb), ("elbo_only", no_valid)):
        with Image.open(plots.plot_learning_curves(history, str(tmp_path / f"{name}.png"))) as im:
            widths[name] = im.size[0]
    assert widths["aevb"] > 1.6 * widths["elbo_only"]  # two panels vs one


@pytest.mark.parametrize(("feature_shape", "cell"), [((8, 8), 8), ((28, 28), 28), ((784,), 28)])
def test_manifold_cells_are_at_least_28_pixels(tmp_path, feature_shape, cell):
    n = 20
    decoded = np.random.default_rng(0).random((n * n, math.prod(feature_shape)))
    path = plots.plot_manifold(decoded, n, feature_shape, str(tmp_path / "m.png"))
    with Image.open(path) as im:
        width, height = im.size
    scale = math.ceil(plots.MANIFOLD_CELL_PX / cell)
    assert width == n * cell * scale + (n - 1)  # cells pixel for pixel, 1-px lines between
    assert height >= width and width >= n * plots.MANIFOLD_CELL_PX


def test_held_out_rows_prefers_the_test_split_and_caps_the_count(data_root):
    from tasks.store.readers import read_split

    version = write_dataset(data_root, "plotdata", rows={C.TRAIN: 30, C.VALID: 9, C.TEST: 7})
    from tasks.run_records import held_out_rows
    from tasks.store.datasets import load_manifest

    x, labels = held_out_rows(data_root, load_manifest(data_root, "plotdata", version), max_rows=5)
    _, x_test, labels_test = read_split(data_root, "plotdata", version, C.TEST)
    np.testing.assert_array_equal(x, x_test[:5])
    np.testing.assert_array_equal(labels, labels_test[:5])


def test_held_out_rows_falls_back_to_valid_when_test_is_empty(data_root):
    from tasks.store.readers import read_split

    version = write_dataset(data_root, "notest", rows={C.TRAIN: 30, C.VALID: 9, C.TEST: 0})
    from tasks.run_records import held_out_rows
    from tasks.store.datasets import load_manifest

    x, _ = held_out_rows(data_root, load_manifest(data_root, "notest", version))
    np.testing.assert_array_equal(x, read_split(data_root, "notest", version, C.VALID)[1])


@pytest.mark.parametrize(
    "degraded_shape, shape, clean",
    [((8, 8), (8, 8), True), ((4, 4), (8, 8), True), ((8, 8), (8, 8), False), ((5,), (5,), True)],
)
def test_restoration_grid_has_a_row_per_example_and_a_column_per_stage(
    tmp_path, degraded_shape, shape, clean
):
    rng = np.random.default_rng(0)
    n = 4
    d, dd = math.prod(shape), math.prod(degraded_shape)
    mask = (rng.random((n, dd)) < 0.5).astype(np.float32) if dd == d else None
    path = plots.plot_restoration(
        rng.random((n, dd)),
        rng.random((n, d)),
        rng.random((n, d)) if clean else None,
        degraded_shape,
        shape,
        str(tmp_path / "grid.png"),
        "map",
        mask=mask,
    )
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
    if plots.image_shape(shape) is not None:  # pictures: n rows of 2 or 3 cells, taller than wide
        assert height > width * (n / (3 if clean else 2)) * 0.6
    else:  # feature vectors: one profile panel
        assert width > height
