"""The reproduce report's figure checks on constructed inputs with known answers, the flags they
raise, and the image grids' pixel sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tasks.reproduce import checks
from tasks.reproduce.figures import MIN_CELL_PX, cell_scale, image_grid, plot_image_panels


def test_axis_kl_is_the_closed_form_and_zero_at_the_prior():
    mean = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    std = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 0.5]])
    kl = checks.axis_kl(mean, std)
    # axis 0: the prior itself; axis 1: 0.5 m^2; axis 2: 0.5 (s^2 - 1 - ln s^2)
    np.testing.assert_allclose(kl, [0.0, 0.5, 0.5 * (0.25 - 1.0 - math.log(0.25))], atol=1e-12)


def test_an_axis_with_kl_near_zero_is_inactive():
    rng = np.random.default_rng(0)
    n = 200
    mean = np.stack([rng.normal(0, 1, n), rng.normal(0, 1e-3, n), rng.normal(0, 2, n)], axis=1)
    std = np.stack([np.full(n, 0.2), np.full(n, 0.999), np.full(n, 0.1)], axis=1)
    assert checks.axis_kl(mean, std)[1] < 1e-4
    assert checks.active_axes(mean, std) == 2
    assert checks.active_axes(np.zeros((5, 4)), np.ones((5, 4))) == 0  # q = p(z) everywhere


def test_floor_share_counts_stds_near_the_floor():
    floor = 0.0025
    std = np.array([0.0025, 0.003, 0.0037, 0.0038, 0.1])
    assert checks.floor_share(std, floor) == pytest.approx(3 / 5)  # <= 1.5 x floor = 0.00375
    assert checks.floor_share(std, floor, margin=1.0) == pytest.approx(1 / 5)


def test_intensity_gap_is_zero_for_matching_means_and_large_for_inverted_samples():
    data = np.zeros((10, 100))
    data[:, :20] = 1.0  # mean intensity 0.2
    assert checks.intensity_gap(data[::-1], data) == pytest.approx(0.0)
    assert checks.intensity_gap(1.0 - data, data) == pytest.approx((0.8 - 0.2) / 0.2)
    assert checks.intensity_gap(np.full((10, 100), 0.5), data) == pytest.approx(0.3 / 0.2)
    assert checks.intensity_gap(np.full((3, 100), 0.25), data) == pytest.approx(0.25)


def test_identical_cells_are_similar_and_varied_ones_are_not():
    rng = np.random.default_rng(1)
    digit = rng.random(64)
    assert checks.cell_similarity(np.tile(digit, (400, 1))) == pytest.approx(1.0)
    # the same picture at other brightness and contrast is still the same picture
    a, b = rng.uniform(0.2, 1.0, (400, 1)), rng.uniform(-0.5, 0.5, (400, 1))
    assert checks.cell_similarity(a * digit + b) == pytest.approx(1.0)
    assert checks.cell_similarity(np.full((400, 64), 0.3)) == 1.0  # flat cells: no shape at all
    assert abs(checks.cell_similarity(rng.random((400, 64)))) < 0.1  # unrelated cells
    # two alternating orthogonal zero-mean patterns of equal norm: corr with their mean 1/sqrt(2)
    u = np.tile([1.0, -1.0, 0.0, 0.0], 16)
    v = np.tile([0.0, 0.0, 1.0, -1.0], 16)
    assert checks.cell_similarity(np.stack([u, v] * 200)) == pytest.approx(1 / math.sqrt(2))


def _curve(method, k, points, active):
    return {"method": method, "latent_dim": k, "num_train": 100, "points": [{}] * points, **active}


def test_figure_flags_name_each_degenerate_figure_and_nothing_else():
    results = {
        "fig2": {
            "curves": [
                _curve("aevb", 3, 4, {"active_axes": 3}),
                _curve("aevb", 20, 4, {"active_axes": 7}),
            ],
            "samples": {
                "3": {"sample_mean": 0.14, "data_mean": 0.13, "intensity_gap": 0.08},
                "20": {"sample_mean": 0.80, "data_mean": 0.13, "intensity_gap": 5.2},
            },
        },
        "fig3": {"curves": [_curve("aevb", 3, 2, {"active_axes": 3}), _curve("mcem", 3, 2, {})]},
        "manifolds": {
            "digits": {"latent_dim": 2, "active_axes": 2, "cell_similarity": 0.6},
            "digits-continuous": {
                "latent_dim": 2,
                "active_axes": 1,
                "cell_similarity": 0.99,
                "decoder_std_floor": 0.0025,
                "decoder_std_median": 0.0026,
                "decoder_std_floor_share": 0.9,
            },
        },
    }
    flags = checks.figure_flags(results)
    assert set(flags) == {
        "fig2_bound_vs_samples.png",
        "fig5_samples.png",
        "fig3_marginal_likelihood.png",
        "fig4_manifold_digits-continuous.png",
    }
    assert len(flags["fig2_bound_vs_samples.png"]) == 1
    assert (
        "20-D AEVB model (N = 100) uses 7 of its 20 latent axes"
        in flags["fig2_bound_vs_samples.png"][0]
    )
    assert len(flags["fig5_samples.png"]) == 1 and "20-D samples" in flags["fig5_samples.png"][0]
    assert flags["fig3_marginal_likelihood.png"] == [
        f"Fig. 3 has 2 evaluated budget(s) per curve (fewer than {checks.MIN_BUDGETS}): too few "
        "points to show a learning curve"
    ]
    manifold = " ".join(flags["fig4_manifold_digits-continuous.png"])
    assert "uses 1 of its 2 latent axes" in manifold
    assert "nearly identical" in manifold and "collapsed Gaussian decoder variance" in manifold


def test_image_grid_upscales_by_nearest_neighbour_to_the_minimum_cell_size():
    assert cell_scale((8, 8)) == 4 and cell_scale((28, 28)) == 1 and cell_scale((20, 20)) == 2
    rng = np.random.default_rng(2)
    images = rng.random((6, 16)).astype(np.float32)  # 4 x 4 images
    scale = cell_scale((4, 4))
    assert scale * 4 >= MIN_CELL_PX
    grid = image_grid(images, (4, 4), per_row=3, scale=scale)
    side = 4 * scale
    assert grid.shape == (2 * side + 1, 3 * side + 2)  # 1-px lines between cells
    cell = grid[side + 1 : 2 * side + 1, side + 1 : 2 * side + 1]  # row 1, column 1: image 4
    np.testing.assert_array_equal(cell[::scale, ::scale], images[4].reshape(4, 4))
    np.testing.assert_array_equal(cell, np.kron(images[4].reshape(4, 4), np.ones((scale, scale))))


@pytest.mark.parametrize(("shape", "per_row", "panels"), [((8, 8), 20, 1), ((28, 28), 10, 3)])
def test_image_panels_png_gives_every_cell_the_minimum_pixels(tmp_path, shape, per_row, panels):
    rng = np.random.default_rng(3)
    n = per_row * 2
    path = tmp_path / "grid.png"
    px = plot_image_panels(
        {f"panel {i}": rng.random((n, math.prod(shape))) for i in range(panels)},
        shape,
        path,
        per_row=per_row,
    )
    assert px >= MIN_CELL_PX and px % shape[0] == 0
    with Image.open(path) as img:
        width, height = img.size
    assert width >= panels * per_row * MIN_CELL_PX and height >= 2 * MIN_CELL_PX
