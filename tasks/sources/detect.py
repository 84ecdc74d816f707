"""Format detection for `aevb ingest PATH` from file names and magic bytes (override: `format`)."""

from __future__ import annotations

import os

from models.errors import DatasetError
from tasks.sources.idx import IDX_DTYPES, IMAGES_RE
from tasks.sources.images import image_files

SUPPORTED = (
    "IDX (*-images-idx3-ubyte[.gz] files or a folder of them), CSV (.csv[.gz]), NPZ (.npz), "
    "Parquet (.parquet file or folder), a folder of PNG/JPEG images"
)


def _looks_like_idx(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in IDX_DTYPES and 0 < head[3] < 8


def detect(path: str) -> str:
    """One of idx, csv, npz, parquet, images; DatasetError naming the supported formats otherwise."""
    if os.path.isdir(path):
        names = [f for _, _, files in os.walk(path) for f in files]
        if any(IMAGES_RE.match(f) for f in os.listdir(path)):
            return "idx"
        if any(f.endswith(".parquet") for f in names):
            return "parquet"
        if image_files(path):
            return "images"
        raise DatasetError(
            f"{path}: unknown format: the folder holds none of {SUPPORTED}; or pass `format`"
        )
    lower = path.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if "ubyte" in lower or lower.endswith((".idx", ".idx.gz")) or _looks_like_idx(path):
        return "idx"
    raise DatasetError(f"{path}: unknown format; supported: {SUPPORTED}; or pass `format`")
