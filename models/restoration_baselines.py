"""Model-free restoration baselines (numpy/scipy): what a model-based restoration must beat.

Every baseline maps the observation y [B, D_obs] (and, for inpainting, the mask [B, D], 1 =
observed) to a restored x [B, D] in model space, row by row, with no learning and no look at the
clean data:

- denoise (gaussian): the noisy input clipped to the value range (clipping alone removes much
  of the noise on images with many pixels at the range ends, such as digits); a 3x3 median; the adaptive median (Hwang & Haddad 1995,
  windows 3..7); a 3x3 local Wiener filter with the known noise level (only when it is known).
- salt_pepper: the corrupted input; a 3x3 median; the adaptive median.
- inpaint: mean imputation (each feature's mean over the batch's observed entries: the one
  baseline that looks across rows); nearest observed neighbour (Euclidean distance transform); harmonic interpolation
  (the discrete Laplace equation L x = 0 on the missing pixels of the 4-neighbour grid graph,
  observed pixels as Dirichlet data: exact for linear images); biharmonic (L^2 x = 0 on the missing
  pixels: exact for linear images whose holes are >= 2 pixels from the border).
- superres: nearest-neighbour, bilinear and bicubic (Keys, a = -0.5) upsampling, the low-resolution
  samples placed at the centres of the pooled blocks and the grid extended by linear extrapolation,
  so both interpolators reproduce linear images exactly (average pooling of a linear image is its
  value at the block centre).

Results are clipped to the value range [low, high]. Image features [H, W(, C)] are filtered per
channel; flat features [D] are treated as one 1 x D image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from scipy import ndimage, signal, sparse
from scipy.sparse.linalg import spsolve

from models.degradations import DegradationSpec

ADAPTIVE_MAX_WINDOW = 7


def _images(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[B, D] -> [B, H, W, C] float64 (flat features: [B, 1, D, 1])."""
    x = np.asarray(x, np.float64)
    if len(shape) == 1:
        return x.reshape(-1, 1, shape[0], 1)
    h, w, *c = shape
    return x.reshape(-1, h, w, c[0] if c else 1)


def _rows(img: np.ndarray, spec: DegradationSpec) -> np.ndarray:
    """[B, H, W, C] -> [B, D] float32, clipped to the value range."""
    return np.clip(img.reshape(len(img), -1), spec.low, spec.high).astype(np.float32)


# ------------------------------------------------------------------------------- filters


def median_filter(y: np.ndarray, shape: tuple[int, ...], size: int = 3) -> np.ndarray:
    """size x size median per image and channel (border: nearest pixel repeated), [B, D]."""
    img = _images(y, shape)
    return ndimage.median_filter(img, size=(1, size, size, 1), mode="nearest").reshape(len(img), -1)


def adaptive_median(
    y: np.ndarray, shape: tuple[int, ...], max_window: int = ADAPTIVE_MAX_WINDOW
) -> np.ndarray:
    """Adaptive median filter, [B, D]. Per pixel, grow the window (3, 5, ..) until its median lies
    strictly between its min and max; then keep the pixel if it too lies strictly between them (it
    is no impulse), else replace it by the median. A window that never qualifies gives its median."""
    img = _images(y, shape)
    out = np.empty_like(img)
    todo = np.ones(img.shape, bool)
    for size in range(3, max_window + 1, 2):
        win = (1, size, size, 1)
        lo = ndimage.minimum_filter(img, size=win, mode="nearest")
        med = ndimage.median_filter(img, size=win, mode="nearest")
        hi = ndimage.maximum_filter(img, size=win, mode="nearest")
        ok = todo & (lo < med) & (med < hi)
        keep = (lo < img) & (img < hi)
        out[ok] = np.where(keep, img, med)[ok]
        todo &= ~ok
        if size + 2 > max_window:
            out[todo] = med[todo]
    return out.reshape(len(img), -1)


def wiener_filter(
    y: np.ndarray, shape: tuple[int, ...], noise_std: float, size: int = 3
) -> np.ndarray:
    """Local (size x size) Wiener filter with a known noise variance, per image and channel."""
    img = _images(y, shape)
    out = np.empty_like(img)
    for b in range(len(img)):
        for c in range(img.shape[-1]):
            out[b, :, :, c] = signal.wiener(img[b, :, :, c], (size, size), noise_std**2)
    return out.reshape(len(img), -1)


# ------------------------------------------------------------------------------- inpainting


def mean_impute(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each missing entry gets the mean of that feature's observed entries in the batch (0 when
    none is observed) - strong on aligned images such as digits, where pixels have stable means."""
    y, mask = np.asarray(y, np.float64), np.asarray(mask, np.float64)
    counts = mask.sum(0)
    means = np.divide((y * mask).sum(0), counts, out=np.zeros(y.shape[1]), where=counts > 0)
    return mask * y + (1.0 - mask) * means[None, :]


def nearest_fill(y: np.ndarray, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each missing pixel takes the value of the nearest observed pixel of its channel, [B, D]."""
    img, observed = _images(y, shape), _images(mask, shape) > 0.5
    out = img.copy()
    for b in range(len(img)):
        for c in range(img.shape[-1]):
            seen = observed[b, :, :, c]
            if seen.all() or not seen.any():
                continue
            _, (ii, jj) = ndimage.distance_transform_edt(~seen, return_indices=True)
            out[b, :, :, c] = img[b, :, :, c][ii, jj]
    return out.reshape(len(img), -1)


@functools.lru_cache(maxsize=8)
def grid_laplacian(h: int, w: int) -> sparse.csr_matrix:
    """Graph Laplacian (degree - adjacency) of the h x w 4-neighbour grid, [h*w, h*w]."""
    idx = np.arange(h * w).reshape(h, w)
    pairs = [(idx[:, :-1].ravel(), idx[:, 1:].ravel()), (idx[:-1, :].ravel(), idx[1:, :].ravel())]
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    ones = np.ones(len(a))
    adj = sparse.coo_matrix((ones, (a, b)), shape=(h * w, h * w))
    adj = (adj + adj.T).tocsr()
    return (sparse.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()


@functools.lru_cache(maxsize=8)
def _bilaplacian(h: int, w: int) -> sparse.csr_matrix:
    lap = grid_laplacian(h, w)
    return (lap @ lap).tocsr()


def laplace_fill(
    y: np.ndarray, mask: np.ndarray, shape: tuple[int, ...], order: int = 1, fill: float = 0.0
) -> np.ndarray:
    """Harmonic (order 1: L x = 0) or biharmonic (order 2: L^2 x = 0) interpolation of the missing
    pixels with the observed ones fixed, per image and channel, [B, D]. A channel with no observed
    pixel is set to ``fill``."""
    img, observed = _images(y, shape), _images(mask, shape) > 0.5
    _, h, w, channels = img.shape
    op = grid_laplacian(h, w) if order == 1 else _bilaplacian(h, w)
    out = img.copy()
    for b in range(len(img)):
        for c in range(channels):
            seen = observed[b, :, :, c].ravel()
            if seen.all():
                continue
            values = out[b, :, :, c].reshape(-1)  # a view: writes land in `out`
            if not seen.any():
                values[:] = fill
                continue
            miss = ~seen
            a = op[miss][:, miss].tocsc()
            rhs = -(op[miss][:, seen] @ values[seen])
            values[miss] = np.atleast_1d(spsolve(a, rhs))
    return out.reshape(len(img), -1)


# ------------------------------------------------------------------------------- upsampling


def _keys(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _extrapolated(j: int, n: int) -> dict[int, float]:
    """Sample j of a length-n grid extended linearly beyond its ends, as weights of samples 0..n-1."""
    if 0 <= j < n:
        return {j: 1.0}
    if n == 1:
        return {0: 1.0}
    if j < 0:  # x[j] = x[0] + j (x[1] - x[0])
        return {0: 1.0 - j, 1: float(j)}
    k = j - (n - 1)  # x[j] = x[n-1] + k (x[n-1] - x[n-2])
    return {n - 1: 1.0 + k, n - 2: float(-k)}


@functools.lru_cache(maxsize=32)
def upsampling_matrix(n: int, factor: int, method: str) -> np.ndarray:
    """[n * factor, n]: 1-D interpolation from block centres to pixel centres (linear extension)."""
    taps = {"bilinear": (0, 1), "bicubic": (-1, 0, 1, 2)}[method]
    kernel = (lambda t: np.maximum(1 - np.abs(t), 0.0)) if method == "bilinear" else _keys
    m = np.zeros((n * factor, n))
    for p in range(n * factor):
        u = (p + 0.5) / factor - 0.5  # pixel centre in low-resolution sample units
        base = int(np.floor(u))
        for tap in taps:
            weight = float(kernel(np.asarray(u - (base + tap))))
            for j, v in _extrapolated(base + tap, n).items():
                m[p, j] += weight * v
    return m


def upsample(y: np.ndarray, spec: DegradationSpec, method: str) -> np.ndarray:
    """Nearest, bilinear or bicubic upsampling of y [B, (H/s)(W/s)C] to [B, H W C]."""
    h, w, *_ = spec.feature_shape
    s = spec.factor
    img = _images(y, spec.observed_shape)
    if method == "nearest":
        up = np.repeat(np.repeat(img, s, axis=1), s, axis=2)
    else:
        mh, mw = upsampling_matrix(h // s, s, method), upsampling_matrix(w // s, s, method)
        up = np.einsum("ph,bhwc,qw->bpqc", mh, img, mw)
    return up.reshape(len(img), -1)


# ------------------------------------------------------------------------------- the catalogue

Baseline = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def baselines(spec: DegradationSpec) -> dict[str, Baseline]:
    """{name: f(y, mask) -> x [B, D] float32} of the degradation's baselines, in table order."""
    shape = spec.feature_shape

    def clip(fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray]) -> Baseline:
        return lambda y, mask: _rows(_images(fn(np.asarray(y), mask), shape), spec)

    if spec.kind in ("gaussian", "salt_pepper"):
        out = {
            "clipped noisy input" if spec.kind == "gaussian" else "corrupted input": clip(
                lambda y, m: y
            ),
            "median 3x3": clip(lambda y, m: median_filter(y, shape)),
            "adaptive median": clip(lambda y, m: adaptive_median(y, shape)),
        }
        if spec.kind == "gaussian" and spec.noise_std is not None:
            out["Wiener 3x3"] = clip(lambda y, m: wiener_filter(y, shape, spec.noise_std))
        return out
    if spec.kind == "inpaint":
        mid = 0.5 * (spec.low + spec.high)
        return {
            "mean imputation": clip(lambda y, m: mean_impute(y, m)),
            "nearest neighbour": clip(lambda y, m: nearest_fill(y, m, shape)),
            "harmonic": clip(lambda y, m: laplace_fill(y, m, shape, 1, mid)),
            "biharmonic": clip(lambda y, m: laplace_fill(y, m, shape, 2, mid)),
        }
    return {
        f"{name} upsampling": clip(lambda y, m, name=name: upsample(y, spec, name))
        for name in ("nearest", "bilinear", "bicubic")
    }


def slug(name: str) -> str:
    """A baseline's name as a metric-key segment: "median 3x3" -> "median_3x3"."""
    return name.lower().replace(" ", "_").replace("-", "_")
