"""IDX files (the MNIST / Fashion-MNIST format), raw or gzipped.

Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, then each dimension as a big-endian uint32; the payload is
the values in C order. A folder's `<prefix>-images-idx3-ubyte[.gz]` files are paired with their
`<prefix>-labels-idx1-ubyte[.gz]`; a `t10k`/`test` prefix marks the test split.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from models.errors import DatasetError
from tasks.sources import gz
from tasks.sources.base import SourceData, finish, numbered_ids, require_file
from tasks.sources.files import check_folder

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_RE = re.compile(r"^(?P<prefix>.+?)[-_.]images?[-_.]idx\d[-_.]ubyte(\.gz)?$", re.IGNORECASE)
TEST_PREFIXES = ("t10k", "test")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gz.decompress(raw)
    except gz.ERRORS as exc:
        raise DatasetError(
            f"{path}: truncated or corrupt gzip data ({exc}); re-copy the file"
        ) from exc


def read_idx(path: str) -> np.ndarray:
    """The array an IDX file holds, in native byte order."""
    data = _read_bytes(require_file(path, "IDX file"))
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise DatasetError(
            f"{path}: bad IDX magic {data[:4].hex() or '(empty file)'}; expected 0000 + type code "
            "08/09/0b/0c/0d/0e + number of dimensions; is this an IDX file?"
        )
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes); re-copy the file")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: truncated IDX payload: header says shape {list(dims)} ({expected} bytes) but "
            f"{len(data) - header} bytes follow; re-copy or re-download the file"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def header_dims(path: str) -> tuple[int, ...] | None:
    """The shape an uncompressed IDX file's header declares, checked against the file's size
    without reading the payload (cheap: the CLI calls it before a flow starts); None for gzip."""
    with open(require_file(path, "IDX file"), "rb") as fh:
        head = fh.read(4 + 4 * 255)
    if head[:2] == b"\x1f\x8b":
        return None
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or head[3] == 0:
        read_idx(path)  # raises the full message
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        read_idx(path)
    dims = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    expected = math.prod(dims) * np.dtype(IDX_DTYPES[head[2]]).itemsize
    if os.path.getsize(path) - 4 - 4 * ndim != expected:
        read_idx(path)
    return dims


def check_pairs(path: str, labels_file: str | None = None) -> None:
    """Header-only checks of an IDX source (magic, sizes, label counts) before it is read."""
    if os.path.isdir(path):
        found = sorted(f for f in check_folder(path) if "/" not in f and IMAGES_RE.match(f))
        pairs = [(os.path.join(path, f), _labels_path(os.path.join(path, f))) for f in found]
    else:
        pairs = [(path, labels_file or _labels_path(path))]
    for images, labels in pairs:
        x = header_dims(images)
        y = header_dims(labels) if labels else None
        if x is not None and y is not None and (len(y) != 1 or y[0] != x[0]):
            raise DatasetError(
                f"{labels}: {y[0]} labels (shape {list(y)}) for {x[0]} images in {images}; "
                "pair each images file with its own labels file"
            )


def _labels_path(images: str) -> str | None:
    folder, name = os.path.split(images)
    candidate = re.sub(r"images?([-_.])idx\d", r"labels\1idx1", name, flags=re.IGNORECASE)
    for option in (candidate, candidate.removesuffix(".gz"), candidate + ".gz"):
        if option != name and os.path.exists(os.path.join(folder, option)):
            return os.path.join(folder, option)
    return None


def _pair(images: str, labels: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = read_idx(images)
    if x.ndim < 2:
        raise DatasetError(
            f"{images}: IDX images need >= 2 dimensions [N, ...], found {list(x.shape)}"
        )
    if labels is None:
        return x, None
    y = read_idx(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(
            f"{labels}: {len(y)} labels (shape {list(y.shape)}) for {len(x)} images in {images}; "
            "pair each images file with its own labels file"
        )
    return x, y


def load_idx_source(
    path: str,
    *,
    labels_file: str | None = None,
    scale: float | None = None,
    storage_dtype: str = "auto",
) -> SourceData:
    """A folder of IDX image/label pairs (train + t10k keep their split) or one images file."""
    if os.path.isdir(path):
        found = sorted(f for f in check_folder(path) if "/" not in f and IMAGES_RE.match(f))
        if not found:
            raise DatasetError(
                f"{path}: no IDX images files (<prefix>-images-idx3-ubyte[.gz]) in this folder"
            )
        pairs = [(os.path.join(path, f), _labels_path(os.path.join(path, f))) for f in found]
        if labels_file:
            raise DatasetError(
                f"{path}: `labels_file` applies to a single IDX images file, not a folder"
            )
    else:
        require_file(path, "IDX file")
        pairs = [
            (
                path,
                require_file(labels_file, "IDX labels file") if labels_file else _labels_path(path),
            )
        ]
    xs, ys, ids, fixed = [], [], [], []
    # Each pair is gunzipped on its own thread (inflate releases the GIL): the wall clock of the
    # largest file, not of them all; errors surface in file order.
    with ThreadPoolExecutor(max_workers=min(len(pairs), os.cpu_count() or 1)) as pool:
        loaded = list(pool.map(lambda pair: _pair(*pair), pairs))
    for (images, _), (x, y) in zip(pairs, loaded, strict=True):
        match = IMAGES_RE.match(os.path.basename(images))
        prefix = match.group("prefix").lower() if match else "row"
        xs.append(x)
        ys.append(
            np.ma.masked_all(len(x), np.int64) if y is None else np.ma.asarray(y.astype(np.int64))
        )
        ids.append(numbered_ids(f"{prefix}-", len(x), 5))
        fixed.append(np.full(len(x), "test" if prefix in TEST_PREFIXES else "train"))
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DatasetError(f"{path}: IDX images files differ in image shape {sorted(shapes)}")
    fixed_split = np.concatenate(fixed) if len({f[0] for f in fixed if len(f)}) > 1 else None
    labels = np.ma.concatenate(ys) if any(y.count() for y in ys) else None
    return finish(
        "idx",
        path,
        "",
        np.concatenate(xs),
        ids=np.concatenate(ids),
        labels=labels,
        scale=scale,
        storage_dtype=storage_dtype,
        fixed_split=fixed_split,
        options={
            k: v for k, v in {"labels_file": labels_file, "scale": scale}.items() if v is not None
        },
    )


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz): for tests and benchmarks."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    dtype = np.dtype(array.dtype).newbyteorder("=")
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).astype(dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(payload)
