"""What every source reader returns: rows in memory plus how they map to model inputs.

A reader validates its input and raises `DatasetError` with one line naming the file, what was
expected, what was found and the fix. Nothing is written by readers; the ingest stage splits rows and
hands them to the dataset store.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.errors import DatasetError

UINT8_SCALE = 1.0 / 255.0


@dataclass
class SourceData:
    """Rows of one source. ``x``: [N, *feature_shape], uint8 or float32 (stored as is).

    ``labels``: int64 [N], masked entries are null (or None for no labels). ``fixed_split``: None,
    or [N] of "train"/"test" when the source itself says which rows are test data (IDX t10k files);
    "train" rows are still divided into train/valid.
    """

    kind: str
    uri: str
    sha256: str
    x: np.ndarray
    ids: np.ndarray
    scale: float
    labels: np.ma.MaskedArray | None = None
    fixed_split: np.ndarray | None = None
    label_names: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def source_record(self) -> dict:
        """The manifest's ``source`` entry."""
        return {"kind": self.kind, "uri": self.uri, "sha256": self.sha256, "options": self.options}


_FILE_DIGESTS: dict[tuple[str, int, int], bytes] = {}  # (path, size, mtime_ns) -> digest


def _file_digest(path: str) -> bytes:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:  # the cache key and the ingest both hash the same files
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.digest()
    return _FILE_DIGESTS[key]


def sha256_files(paths: list[str]) -> str:
    """sha256 over the files' bytes in the given order (names are not part of it)."""
    if len(paths) == 1:
        return _file_digest(paths[0]).hex()
    h = hashlib.sha256()
    for path in paths:
        h.update(_file_digest(path))
    return h.hexdigest()


def require_file(path: str, what: str) -> str:
    """``path`` if it is a regular, readable file (no FIFO, socket or device); DatasetError."""
    from tasks.sources.files import check_file

    return check_file(path, what)


def finish(
    kind: str,
    uri: str,
    sha256: str,
    x: np.ndarray,
    *,
    ids: np.ndarray | None = None,
    labels: np.ndarray | np.ma.MaskedArray | None = None,
    scale: float | None = None,
    storage_dtype: str = "auto",
    **extra: object,
) -> SourceData:
    """Common checks (empty, non-finite, duplicate ids) and the storage dtype/scale decision."""
    if x.ndim < 2 or x.shape[0] == 0 or x[0].size == 0:
        raise DatasetError(
            f"{uri}: input is empty (found array of shape {x.shape}); nothing to ingest"
        )
    n = x.shape[0]
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(n, -1)).all(axis=1))[0])
        raise DatasetError(f"{uri}: row {bad} holds NaN or Inf; clean or drop such rows first")
    if ids is None:
        ids = numbered_ids("", n, 1)
    check_unique_ids(uri, ids)
    x, default_scale = choose_storage(uri, x, storage_dtype)
    return SourceData(
        kind=kind,
        uri=uri,
        sha256=sha256,
        x=x,
        ids=ids,
        scale=float(default_scale if scale is None else scale),
        labels=None if labels is None else np.ma.asarray(labels).astype(np.int64),
        **extra,  # type: ignore[arg-type]
    )


def numbered_ids(prefix: str, n: int, width: int) -> np.ndarray:
    """``f"{prefix}{i:0{width}d}"`` for i in range(n) as an object array of str, built in Arrow
    (a third of a Python list display's time)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "").to_numpy(zero_copy_only=False)


def check_unique_ids(uri: str, ids: np.ndarray) -> None:
    if len(set(map(str, ids.tolist()))) == len(ids):  # a hash set: 4x np.unique's sort
        return
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1][:3]
        raise DatasetError(
            f"{uri}: ids must be unique but {int((counts > 1).sum())} repeat "
            f"(e.g. {', '.join(repr(str(d)) for d in dup)}); fix the id column or omit it to use row numbers"
        )


def choose_storage(uri: str, x: np.ndarray, storage_dtype: str) -> tuple[np.ndarray, float]:
    """uint8 when the values are whole numbers in 0..255 (default scale 1/255), else float32 (1.0)."""
    if storage_dtype not in ("auto", "uint8", "float32"):
        raise DatasetError(f"storage dtype {storage_dtype!r} must be auto, uint8 or float32")
    fits_uint8 = x.dtype == np.uint8 or (
        x.dtype.kind in "iuf"
        and x.size
        and x.min() >= 0
        and x.max() <= 255
        and (np.mod(x, 1) == 0).all()
    )
    if storage_dtype == "uint8" and not fits_uint8:
        raise DatasetError(f"{uri}: storage dtype uint8 needs whole numbers in 0..255; use float32")
    if storage_dtype == "uint8" or (
        storage_dtype == "auto" and fits_uint8 and x.dtype.kind in "iu"
    ):
        return x.astype(np.uint8, copy=False), UINT8_SCALE
    return x.astype(np.float32, copy=False), 1.0
