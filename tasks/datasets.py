"""The Parquet dataset store: layout, manifest, atomic versioned writes, and readers.

Layout (DESIGN.md "Parquet dataset"), under a data root that is a local folder or an fsspec URI:

    <root>/datasets/<name>/CURRENT                         the current version id
    <root>/datasets/<name>/<version>/manifest.json         written last: its presence = complete
    <root>/datasets/<name>/<version>/split=<s>/part-*.parquet   columns id, x, label

`version` is a hash of the content (rows per split in order, feature shape, storage dtype, scale,
split seed), so writing identical data again is a no-op. New versions are staged under a dot-named
folder that readers ignore and then renamed into place (local) or moved with the manifest written
last (object stores); `CURRENT` is replaced atomically. Model inputs are `stored value * scale`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models.constants import COL_ID, COL_LABEL, COL_X, SPLITS
from models.errors import DatasetError

SCHEMA_VERSION = 1
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
STORAGE_DTYPES = ("uint8", "float32")
DEFAULT_DATA_ROOT = str(Path(__file__).resolve().parent.parent / "data")
# Likelihoods whose support is [0, 1] (models/config.py `Likelihood`).
UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
NULL_LABEL = -1


def resolve_data_root(data_root: str | None) -> str:
    """Explicit argument > env ``AEVB_DATA_ROOT`` > ``<repo>/data``; local paths made absolute."""
    root = data_root or os.environ.get("AEVB_DATA_ROOT") or DEFAULT_DATA_ROOT
    return _normalize_root(root)


def validate_name(name: str) -> str:
    """Dataset names match ``[a-z0-9][a-z0-9._-]{0,63}`` (DESIGN.md); raise DatasetError otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DatasetError(
            f"invalid dataset name {name!r}: use 1-64 characters from a-z, 0-9, '.', '_', '-' "
            "starting with a letter or digit (e.g. --name my-digits)"
        )
    return name


@dataclass(frozen=True)
class DatasetManifest:
    """What ``manifest.json`` holds. Model input = stored value * ``scale``."""

    name: str
    version: str
    created_at: str
    source: dict
    feature_shape: tuple[int, ...]
    storage_dtype: str
    scale: float
    value_range: tuple[float, float]
    rows: dict[str, int]
    split_seed: int
    schema_version: int = SCHEMA_VERSION
    label_names: tuple[str, ...] = ()

    @property
    def input_dim(self) -> int:
        return math.prod(self.feature_shape)

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        doc["input_transform"] = f"model_input = float32(x) * {self.scale!r}"
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> DatasetManifest:
        try:
            doc = json.loads(text)
            fields = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in doc.items() if k in fields}
            kwargs["feature_shape"] = tuple(int(d) for d in kwargs["feature_shape"])
            kwargs["value_range"] = tuple(float(v) for v in kwargs["value_range"])
            kwargs["label_names"] = tuple(kwargs.get("label_names", ()))
            kwargs["rows"] = {s: int(n) for s, n in kwargs["rows"].items()}
            return cls(**kwargs)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"{where}: unreadable dataset manifest ({exc}); re-ingest it"
            ) from exc


@dataclass(frozen=True)
class IngestResult:
    """Outcome of writing a dataset; ``created`` is False when identical content already existed."""

    name: str
    version: str
    path: str
    created: bool


def dataset_dir(data_root: str | None, name: str) -> str:
    return _join(resolve_data_root(data_root), "datasets", validate_name(name))


def version_dir(data_root: str | None, name: str, version: str) -> str:
    return _join(dataset_dir(data_root, name), version)


def current_version(data_root: str | None, name: str) -> str | None:
    """The version ``CURRENT`` names, or None when the dataset does not exist."""
    text = _read_text(_join(dataset_dir(data_root, name), "CURRENT"))
    return text.strip() if text else None


def _missing_dataset_error(root: str, name: str) -> DatasetError:
    return DatasetError(
        f"dataset {name!r} not found under {_join(root, 'datasets')}; create it with "
        f"`aevb ingest SOURCE --name {name}` (built-in sources: digits, mnist-5k, fashion-mnist)"
    )


def load_manifest(data_root: str | None, name: str, version: str | None = None) -> DatasetManifest:
    """Manifest of ``version`` (None or "CURRENT" -> the current one); DatasetError if missing."""
    root = resolve_data_root(data_root)
    if version in (None, "", "CURRENT", "current"):
        version = current_version(root, name)
        if version is None:
            raise _missing_dataset_error(root, name)
    path = _join(version_dir(root, name, version), "manifest.json")
    text = _read_text(path)
    if text is None:
        available = ", ".join(list_versions(root, name)) or "none"
        if available == "none":
            raise _missing_dataset_error(root, name)
        raise DatasetError(
            f"dataset {name!r} has no version {version!r} (available: {available}); "
            f"see `aevb datasets show {name}`"
        )
    return DatasetManifest.from_json(text, path)


def list_versions(data_root: str | None, name: str) -> list[str]:
    """Complete versions of ``name`` (those with a manifest), oldest first."""
    base = dataset_dir(data_root, name)
    found = []
    for entry in _list_dirs(base):
        if not entry.startswith(".") and _exists(_join(base, entry, "manifest.json")):
            found.append(entry)
    manifests = [load_manifest(data_root, name, v) for v in found]
    return [m.version for m in sorted(manifests, key=lambda m: m.created_at)]


def list_datasets(data_root: str | None) -> list[DatasetManifest]:
    """The current version's manifest of every dataset under the root, sorted by name."""
    root = resolve_data_root(data_root)
    out = []
    for name in sorted(_list_dirs(_join(root, "datasets"))):
        if NAME_PATTERN.fullmatch(name) and current_version(root, name):
            out.append(load_manifest(root, name))
    return out


def check_model_inputs(manifest: DatasetManifest, likelihood: str) -> None:
    """Raise DatasetError when ``likelihood`` needs inputs in [0, 1] and the dataset's are not."""
    lo, hi = manifest.value_range
    if likelihood in UNIT_INTERVAL_LIKELIHOODS and (lo < 0.0 or hi > 1.0):
        raise DatasetError(
            f"dataset {manifest.name!r} version {manifest.version}: model inputs span [{lo:g}, {hi:g}] "
            f"but likelihood {likelihood!r} needs values in [0, 1]; re-ingest with a --scale that "
            "maps the data into [0, 1] or train with likelihood='gaussian'"
        )


# ----------------------------------------------------------------------------- reading


def split_files(data_root: str | None, name: str, version: str, split: str) -> list[str]:
    """Sorted part files of one split (empty list for an empty split)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    folder = _join(version_dir(data_root, name, version), f"split={split}")
    return sorted(_join(folder, f) for f in _list_files(folder) if f.endswith(".parquet"))


def batch_to_numpy(
    batch: pa.RecordBatch | pa.Table, manifest: DatasetManifest
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids object [N], x in storage dtype [N, D], labels int64 [N] with -1 for null)."""
    x_col = batch.column(COL_X)
    chunks = x_col.chunks if isinstance(x_col, pa.ChunkedArray) else [x_col]
    parts = [c.flatten().to_numpy(zero_copy_only=False) for c in chunks]
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0)
    x = flat.astype(manifest.storage_dtype, copy=False).reshape(-1, manifest.input_dim)
    ids = np.asarray(batch.column(COL_ID).to_pylist(), dtype=object)
    labels = batch.column(COL_LABEL).fill_null(NULL_LABEL).to_numpy(zero_copy_only=False)
    return ids, x, labels.astype(np.int64, copy=False)


def to_model_space(x: np.ndarray, scale: float) -> np.ndarray:
    """Stored values -> float32 model inputs (stored value * scale)."""
    out = x.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def read_split(
    data_root: str | None, name: str, version: str | None, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole split in memory: ids [N] (str objects), x float32 [N, D] model space, labels int64."""
    manifest = load_manifest(data_root, name, version)
    ids, x, labels = read_split_storage(data_root, manifest, split)
    return ids, to_model_space(x, manifest.scale), labels


def read_split_storage(
    data_root: str | None, manifest: DatasetManifest, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like read_split but x stays in the storage dtype (uint8 stays 1 byte per value)."""
    files = split_files(data_root, manifest.name, manifest.version, split)
    if not files:
        empty = np.empty((0, manifest.input_dim), dtype=manifest.storage_dtype)
        return np.empty(0, dtype=object), empty, np.empty(0, dtype=np.int64)
    fs = _arrow_fs(files[0])
    tables = [pq.read_table(_strip(f), filesystem=fs) for f in files]
    return batch_to_numpy(pa.concat_tables(tables), manifest)


def iter_storage_batches(
    data_root: str | None, manifest: DatasetManifest, split: str, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Ordered batches of exactly ``batch_size`` rows (last may be short), x in storage dtype."""
    if batch_size <= 0:
        raise DatasetError(f"batch_size={batch_size} must be > 0")
    files = split_files(data_root, manifest.name, manifest.version, split)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for path in files:
        with _open_parquet(path) as pf:
            for rb in pf.iter_batches(batch_size=batch_size):
                pending.append(rb)
                pending_rows += rb.num_rows
                while pending_rows >= batch_size:
                    table = pa.Table.from_batches(pending)
                    yield batch_to_numpy(table.slice(0, batch_size), manifest)
                    rest = table.slice(batch_size)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield batch_to_numpy(pa.Table.from_batches(pending), manifest)


def iter_batches(
    data_root: str | None, name: str, version: str | None, split: str, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream a split in stored order: (ids [B], x float32 [B, D] model space, labels int64 [B]).

    Memory is bounded by one Parquet row group plus one batch, not by the split's size.
    """
    manifest = load_manifest(data_root, name, version)
    for ids, x, labels in iter_storage_batches(data_root, manifest, split, batch_size):
        yield ids, to_model_space(x, manifest.scale), labels


def make_tf_dataset(
    data_root: str | None,
    name: str,
    version: str | None,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 10_000,
    in_memory: bool | None = None,
    drop_remainder: bool = False,
) -> Any:
    """A ``tf.data.Dataset`` of float32 [B, D] model inputs; see tasks/streaming.py."""
    from tasks.streaming import make_tf_dataset as _make

    return _make(
        data_root, name, version, split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
        shuffle_buffer=shuffle_buffer, in_memory=in_memory, drop_remainder=drop_remainder,
    )  # fmt: skip


# ----------------------------------------------------------------------------- filesystem
# Locations are strings: an absolute local path or an fsspec URI (s3://bucket/prefix, gs://...).


def _is_local(uri: str) -> bool:
    return "://" not in uri


def _normalize_root(root: str) -> str:
    root = str(root)
    if root.startswith("file://"):
        root = root[len("file://") :]
    if _is_local(root):
        return os.path.abspath(os.path.expanduser(root))
    return root.rstrip("/")


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise DatasetError(
            f"cannot open data root {uri!r}: {exc}; install the fsspec backend for its scheme "
            "(e.g. s3fs for s3://) or use a local folder"
        ) from exc


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _strip(uri: str) -> str:
    """Path as the (arrow-wrapped) filesystem of ``uri`` expects it."""
    return _fs(uri)[1]


def _arrow_fs(uri: str) -> pafs.FileSystem:
    if _is_local(uri):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(_fs(uri)[0]))


def _read_text(uri: str) -> str | None:
    fs, path = _fs(uri)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None


def _list_entries(uri: str, *, dirs: bool) -> list[str]:
    fs, path = _fs(uri)
    fs.invalidate_cache(path)  # another process may have written since we last looked
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        if (entry["type"] == "directory") == dirs:
            names.append(entry["name"].rstrip("/").rsplit("/", 1)[-1])
    return names


def _list_dirs(uri: str) -> list[str]:
    return _list_entries(uri, dirs=True)


def _list_files(uri: str) -> list[str]:
    return _list_entries(uri, dirs=False)


def _exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


@contextlib.contextmanager
def _open_parquet(uri: str) -> Iterator[pq.ParquetFile]:
    if _is_local(uri):
        with open(uri, "rb") as fh:
            yield pq.ParquetFile(fh)
    else:
        fs, path = _fs(uri)
        with fs.open(path, "rb") as fh:
            yield pq.ParquetFile(fh)


def _write_text_atomic(uri: str, text: str) -> None:
    """Local: temp file + fsync + os.replace. Object stores: one PUT, atomic by itself."""
    if _is_local(uri):
        tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, uri)
    else:
        fs, path = _fs(uri)
        fs.pipe_file(path, text.encode())


def _makedirs(uri: str) -> None:
    if _is_local(uri):
        os.makedirs(uri, exist_ok=True)


def _rmtree(uri: str) -> None:
    fs, path = _fs(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_staging_name() -> str:
    return f".staging-{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- writing

ROW_GROUP_BYTES = 4 << 20  # ~4 MB of x per row group: a streaming reader holds one at a time
FILE_BYTES = 16 << 20  # ~16 MB of x per part file: the unit of parallel encoding
WRITE_THREADS = 2
COMPRESSION = "snappy"


def _fault_point(point: str) -> None:
    """Test hook: SIGKILL this process at a named point (env AEVB_TEST_KILL_AT=<point>)."""
    if os.environ.get("AEVB_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


class ContentHasher:
    """Order-sensitive sha256 of split contents, independent of how rows are chunked."""

    def __init__(self) -> None:
        self._h = {s: [hashlib.sha256() for _ in range(4)] for s in SPLITS}

    def update(
        self, split: str, ids: Sequence[str], x: np.ndarray, labels: np.ma.MaskedArray
    ) -> None:
        encoded = [str(i).encode() for i in ids]
        h_len, h_ids, h_x, h_labels = self._h[split]
        h_len.update(np.fromiter(map(len, encoded), dtype="<i8", count=len(encoded)).tobytes())
        h_ids.update(b"".join(encoded))
        h_x.update(np.ascontiguousarray(x).tobytes())
        h_labels.update(np.ma.filled(labels, np.iinfo(np.int64).min).astype("<i8").tobytes())

    def version(self, meta: dict) -> str:
        top = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for split in SPLITS:
            for h in self._h[split]:
                top.update(h.digest())
        return top.hexdigest()[:16]


def as_labels(labels: np.ndarray | None, n: int) -> np.ma.MaskedArray:
    """int64 labels with a mask for nulls (None -> all null)."""
    if labels is None:
        return np.ma.masked_all(n, dtype=np.int64)
    return np.ma.asarray(labels).astype(np.int64)


def check_chunk(split: str, ids: Sequence[str], x: np.ndarray, dim: int, dtype: str) -> np.ndarray:
    """Validate one chunk; return x as a contiguous [N, dim] array of the storage dtype."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    x = np.asarray(x)
    if x.size != len(ids) * dim:
        raise DatasetError(
            f"chunk of {len(ids)} ids has {x.size} values; expected {len(ids)} x {dim}"
        )
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x.reshape(len(ids), dim)).all(axis=1))[0])
        raise DatasetError(f"row id {ids[row]!r} holds NaN or Inf; clean or drop such rows first")
    return np.ascontiguousarray(x.reshape(len(ids), dim).astype(dtype, copy=False))


class DatasetWriter:
    """Streams chunks of rows into a staged new version and publishes it atomically on commit.

    Rows are cut into part files of ``rows_per_file`` that up to ``WRITE_THREADS`` threads encode
    at once (Parquet encoding releases the GIL); at most that many files are in flight, so memory
    stays bounded. Use as a context manager: an exception (or ``abort``) removes the stage.
    """

    def __init__(
        self,
        data_root: str | None,
        name: str,
        *,
        feature_shape: Sequence[int],
        storage_dtype: str,
        scale: float,
        split_seed: int,
        source: dict,
        label_names: Sequence[str] = (),
        row_group_rows: int | None = None,
        rows_per_file: int | None = None,
        version: str | None = None,
    ):
        """``version``: the content hash when the caller already computed it (skips hashing)."""
        if storage_dtype not in STORAGE_DTYPES:
            raise DatasetError(f"storage dtype {storage_dtype!r} must be one of {STORAGE_DTYPES}")
        self.root, self.name = resolve_data_root(data_root), validate_name(name)
        self.shape = tuple(int(d) for d in feature_shape)
        self.dim, self.dtype, self.scale = math.prod(self.shape), storage_dtype, float(scale)
        self.split_seed, self.source, self.label_names = int(split_seed), source, tuple(label_names)
        row_bytes = self.dim * np.dtype(storage_dtype).itemsize
        self.row_group_rows = row_group_rows or int(
            np.clip(ROW_GROUP_BYTES // row_bytes, 256, 65536)
        )
        groups_per_file = max(1, FILE_BYTES // (row_bytes * self.row_group_rows))
        self.rows_per_file = rows_per_file or groups_per_file * self.row_group_rows
        self.base = dataset_dir(self.root, self.name)
        self.stage = _join(self.base, new_staging_name())
        self.hasher = None if version else ContentHasher()
        self._version = version
        self.rows = dict.fromkeys(SPLITS, 0)
        self._lo, self._hi = math.inf, -math.inf
        self._pending: dict[str, list[pa.Table]] = {s: [] for s in SPLITS}
        self._next_file = dict.fromkeys(SPLITS, 0)
        self._pool: ThreadPoolExecutor | None = None  # started on the first part file
        self._inflight: list[Future] = []
        self._fs = _arrow_fs(self.root)
        value_type = pa.uint8() if storage_dtype == "uint8" else pa.float32()
        self.schema = pa.schema(
            [
                pa.field(COL_ID, pa.string(), nullable=False),
                pa.field(COL_X, pa.list_(value_type, self.dim), nullable=False),
                pa.field(COL_LABEL, pa.int64(), nullable=True),
            ]
        )

    def meta(self) -> dict:
        """Everything besides the rows that defines the content (part of the version hash)."""
        return {
            "feature_shape": list(self.shape), "storage_dtype": self.dtype, "scale": self.scale,
            "split_seed": self.split_seed, "label_names": list(self.label_names),
            "schema_version": SCHEMA_VERSION,
        }  # fmt: skip

    def write(
        self, split: str, ids: Sequence[str], x: np.ndarray, labels: np.ndarray | None
    ) -> None:
        """Append rows to ``split``. ``labels``: int64 array (masked entries = null) or None."""
        x = check_chunk(split, ids, x, self.dim, self.dtype)
        lab = as_labels(labels, len(ids))
        if not len(ids):
            return
        if self.hasher is not None:
            self.hasher.update(split, ids, x, lab)
        self.rows[split] += len(ids)
        self._lo, self._hi = min(self._lo, float(x.min())), max(self._hi, float(x.max()))
        columns = [
            pa.array([str(i) for i in ids], pa.string()),
            pa.FixedSizeListArray.from_arrays(
                pa.array(x.reshape(-1)), type=self.schema.field(COL_X).type
            ),
            pa.array(np.ma.getdata(lab), pa.int64(), mask=np.ma.getmaskarray(lab)),
        ]
        self._pending[split].append(pa.table(columns, schema=self.schema))
        if sum(t.num_rows for t in self._pending[split]) >= self.rows_per_file:
            self._flush(split, final=False)

    def _flush(self, split: str, *, final: bool) -> None:
        if not self._pending[split]:
            return
        table = pa.concat_tables(self._pending[split])
        while table.num_rows >= self.rows_per_file or (final and table.num_rows):
            self._submit(split, table.slice(0, self.rows_per_file).combine_chunks())
            table = table.slice(self.rows_per_file)
        self._pending[split] = [table] if table.num_rows else []

    def _submit(self, split: str, table: pa.Table) -> None:
        while len(self._inflight) >= WRITE_THREADS:  # bound memory: wait for the oldest file
            self._inflight.pop(0).result()
        folder = _join(self.stage, f"split={split}")
        _makedirs(folder)
        path = _strip(_join(folder, f"part-{self._next_file[split]:05d}.parquet"))
        self._next_file[split] += 1
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="aevb-parquet")
        self._inflight.append(self._pool.submit(self._write_file, path, table))

    def _write_file(self, path: str, table: pa.Table) -> None:
        pq.write_table(
            table, path, filesystem=self._fs, row_group_size=self.row_group_rows,
            compression=COMPRESSION, use_dictionary=[COL_LABEL], write_statistics=[COL_LABEL],
        )  # fmt: skip
        _fault_point("after_part")

    def finish_version(self) -> str:
        """Write what is pending, wait for every file, and return the content hash."""
        for split in SPLITS:
            self._flush(split, final=True)
        while self._inflight:
            self._inflight.pop(0).result()
        if self._pool is not None:
            self._pool.shutdown()
        return self._version or self.hasher.version(self.meta())

    def commit(self) -> IngestResult:
        """Publish the staged version (or drop it if identical content exists) and move CURRENT."""
        if sum(self.rows.values()) == 0:
            raise DatasetError(f"dataset {self.name!r}: no rows to write; the input is empty")
        version = self.finish_version()
        final = _join(self.base, version)
        created = not _exists(_join(final, "manifest.json"))
        if created:
            self._publish(final, self._manifest(version))
        else:
            _rmtree(self.stage)
        _fault_point("before_current")
        set_current(self.root, self.name, version)
        sweep_stale_stages(self.base)
        return IngestResult(self.name, version, final, created)

    def _manifest(self, version: str) -> DatasetManifest:
        return DatasetManifest(
            name=self.name, version=version, created_at=now_iso(), source=self.source,
            feature_shape=self.shape, storage_dtype=self.dtype, scale=self.scale,
            value_range=(self._lo * self.scale, self._hi * self.scale), rows=dict(self.rows),
            split_seed=self.split_seed, label_names=self.label_names,
        )  # fmt: skip

    def _publish(self, final: str, manifest: DatasetManifest) -> None:
        _fault_point("before_publish")
        if _is_local(final):
            _write_text_atomic(_join(self.stage, "manifest.json"), manifest.to_json())
            _rmtree(final)  # a leftover without manifest is never visible; replace it
            os.rename(self.stage, final)
        else:  # object stores have no directory rename: copy parts, then the manifest last
            fs, stage = _fs(self.stage)
            _rmtree(final)
            target = _strip(final)
            for src in sorted(fs.find(stage)):
                fs.copy(src, target + src[len(stage) :])
            _write_text_atomic(_join(final, "manifest.json"), manifest.to_json())
            _rmtree(self.stage)

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        _rmtree(self.stage)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


STALE_STAGE_SECONDS = 6 * 3600


def sweep_stale_stages(base: str, max_age: float = STALE_STAGE_SECONDS) -> None:
    """Remove staging folders of killed runs (local roots; older than ``max_age`` so that a
    concurrent ingest's live stage is never touched). They are invisible to readers either way."""
    if not _is_local(base) or not os.path.isdir(base):
        return
    now = time.time()
    for entry in os.listdir(base):
        path = os.path.join(base, entry)
        if entry.startswith(".staging-") and now - os.path.getmtime(path) > max_age:
            shutil.rmtree(path, ignore_errors=True)


def set_current(data_root: str | None, name: str, version: str) -> None:
    """Point CURRENT at an existing complete version (atomic replace)."""
    root = resolve_data_root(data_root)
    if not _exists(_join(version_dir(root, name, version), "manifest.json")):
        raise DatasetError(f"dataset {name!r} has no complete version {version!r}")
    _write_text_atomic(_join(dataset_dir(root, name), "CURRENT"), version + "\n")


__all__ = [
    "DEFAULT_DATA_ROOT",
    "DatasetManifest",
    "IngestResult",
    "check_model_inputs",
    "current_version",
    "iter_batches",
    "list_datasets",
    "list_versions",
    "load_manifest",
    "make_tf_dataset",
    "read_split",
    "resolve_data_root",
    "validate_name",
]
