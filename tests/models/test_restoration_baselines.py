"""Model-free restoration baselines (models/restoration_baselines.py) on closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from models import restoration_baselines as RB
from models.degradations import DegradationSpec


def _ramp(h=8, w=8, a=0.03, b=0.05, c=0.1):
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return c + a * i + b * j


def test_median_of_a_known_patch_and_an_isolated_outlier():
    patch = np.array([[9, 1, 7], [3, 8, 2], [6, 4, 5]], float)  # median of 1..9 is 5
    assert RB.median_filter(patch.reshape(1, -1), (3, 3)).reshape(3, 3)[1, 1] == 5
    img = np.full((6, 6), 0.3)
    img[2, 3] = 1.0
    out = RB.median_filter(img.reshape(1, -1), (6, 6))
    np.testing.assert_array_equal(out, np.full((1, 36), 0.3))


def test_adaptive_median_removes_isolated_salt_and_pepper_exactly():
    clean = np.where(np.arange(12)[None, :] < 6, 0.2, 0.8) * np.ones((12, 1))  # a step edge
    noisy = clean.copy()
    for r, c, v in [(2, 2, 1.0), (5, 9, 0.0), (9, 3, 1.0), (10, 10, 0.0), (3, 6, 0.0)]:
        noisy[r, c] = v
    out = RB.adaptive_median(noisy.reshape(1, -1), (12, 12)).reshape(12, 12)
    np.testing.assert_array_equal(out, clean)
    # no impulse: pixels strictly inside their window's range are kept as they are
    plane = _ramp(12, 12)
    kept = RB.adaptive_median(plane.reshape(1, -1), (12, 12)).reshape(12, 12)
    np.testing.assert_array_equal(kept[1:-1, 1:-1], plane[1:-1, 1:-1])


def test_wiener_with_a_dominant_noise_level_is_the_local_mean():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(7, 7))
    out = RB.wiener_filter(img.reshape(1, -1), (7, 7), noise_std=10.0).reshape(7, 7)
    np.testing.assert_allclose(out[3, 3], img[2:5, 2:5].mean(), rtol=1e-12)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("factor", [2, 4])
def test_interpolating_upsampling_of_a_pooled_linear_ramp_is_exact(method, factor):
    ramp = _ramp(8, 8)
    spec = DegradationSpec("superres", (8, 8), noise_std=0.05, factor=factor)
    n = 8 // factor
    low = ramp.reshape(n, factor, n, factor).mean(axis=(1, 3)).reshape(1, -1)
    np.testing.assert_allclose(RB.upsample(low, spec, method), ramp.reshape(1, -1), atol=1e-12)
    # nearest neighbour is not exact on a ramp (a sanity check of the test itself)
    assert np.abs(RB.upsample(low, spec, "nearest") - ramp.reshape(1, -1)).max() > 0.01


def test_upsampling_matrices_reproduce_constants_and_nearest_repeats_blocks():
    for method in ("bilinear", "bicubic"):
        np.testing.assert_allclose(RB.upsampling_matrix(5, 3, method).sum(1), 1.0)
    spec = DegradationSpec("superres", (4, 4, 2), noise_std=0.05, factor=2)
    low = np.arange(8.0).reshape(1, -1)  # [2, 2, 2] image
    up = RB.upsample(low, spec, "nearest").reshape(4, 4, 2)
    np.testing.assert_array_equal(up[:2, :2, 1], np.full((2, 2), 1.0))
    np.testing.assert_array_equal(up[2:, 2:, 0], np.full((2, 2), 6.0))


def test_harmonic_and_biharmonic_interpolation_of_a_linear_image_are_exact():
    ramp = _ramp(9, 9)
    mask = np.ones((9, 9))
    mask[3:6, 2:7] = 0  # a hole >= 2 pixels from the border
    mask[7, 4] = 0
    y, m = (ramp * mask).reshape(1, -1), mask.reshape(1, -1)
    np.testing.assert_allclose(RB.laplace_fill(y, m, (9, 9), order=1), ramp.reshape(1, -1))
    hole = mask.copy()
    hole[7, 4] = 1
    y2, m2 = (ramp * hole).reshape(1, -1), hole.reshape(1, -1)
    np.testing.assert_allclose(RB.laplace_fill(y2, m2, (9, 9), order=2), ramp.reshape(1, -1))


def test_harmonic_fill_of_flat_features_interpolates_linearly_between_observed_ends():
    y = np.array([[1.0, 0, 0, 0, 5.0]])
    m = np.array([[1.0, 0, 0, 0, 1]])
    np.testing.assert_allclose(RB.laplace_fill(y, m, (5,)), [[1, 2, 3, 4, 5]])
    np.testing.assert_allclose(RB.laplace_fill(y, np.zeros_like(m), (5,), fill=0.5), 0.5)


def test_mean_imputation_fills_missing_with_observed_feature_means():
    y = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 6.0]])
    mask = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(RB.mean_impute(y, mask), [[1, 2], [3, 4], [2, 6]])


def test_nearest_fill_copies_the_closest_observed_pixel():
    img = np.arange(16.0).reshape(4, 4)
    mask = np.ones((4, 4))
    mask[0, 0] = mask[3, 2] = 0
    out = RB.nearest_fill((img * mask).reshape(1, -1), mask.reshape(1, -1), (4, 4)).reshape(4, 4)
    assert out[0, 0] in (img[0, 1], img[1, 0]) and out[3, 2] in (img[3, 1], img[3, 3], img[2, 2])
    np.testing.assert_array_equal(out[mask == 1], img[mask == 1])


@pytest.mark.parametrize(
    "kind, names",
    [
        ("gaussian", ["clipped noisy input", "median 3x3", "adaptive median", "Wiener 3x3"]),
        ("salt_pepper", ["corrupted input", "median 3x3", "adaptive median"]),
        ("inpaint", ["mean imputation", "nearest neighbour", "harmonic", "biharmonic"]),
        ("superres", ["nearest upsampling", "bilinear upsampling", "bicubic upsampling"]),
    ],
)
def test_the_catalogue_per_degradation_clips_to_the_value_range(kind, names):
    spec = DegradationSpec(kind, (4, 4), noise_std=0.1, amount=0.1)
    table = RB.baselines(spec)
    assert list(table) == names
    rng = np.random.default_rng(1)
    y = rng.normal(0.5, 1.0, size=(3, 4 if kind == "superres" else 16))
    mask = (rng.uniform(size=(3, 16)) > 0.3).astype(np.float32)
    for fn in table.values():
        x = fn(y, mask)
        assert x.shape == (3, 16) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert "Wiener 3x3" not in RB.baselines(DegradationSpec("gaussian", (4, 4)))
