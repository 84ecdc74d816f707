"""Writing a dataset version: content hash, part files, atomic publication, then CURRENT.

`DatasetWriter` streams chunks of rows into a staged folder beside the dataset's versions
(tasks/store/publish.py `Stage`), cut into part files that up to ``WRITE_THREADS`` threads encode
at once (Parquet encoding releases the GIL; at most that many files are in flight, so memory stays
bounded). `commit` computes the version (a hash of the content and of everything else that defines
it), publishes the folder under that name, writes `<version>.manifest.json` beside it and moves
CURRENT last. Identical content already stored means nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.constants import COL_ID, COL_LABEL, COL_X, SPLITS
from models.errors import DatasetError
from tasks.store import fs, publish, tables
from tasks.store.datasets import (
    SCHEMA_VERSION,
    STORAGE_DTYPES,
    DatasetManifest,
    dataset_dir,
    is_complete,
    manifest_path,
    set_current,
    upgrade_layout,
    validate_name,
)
from tasks.store.readers import check_split
from tasks.store.roots import resolve_data_root

ROW_GROUP_BYTES = 4 << 20  # ~4 MB of x per row group: a streaming reader holds one at a time
FILE_BYTES = 16 << 20  # ~16 MB of x per part file: the unit of parallel encoding
WRITE_THREADS = 2
COMPRESSION = "snappy"


@dataclass(frozen=True)
class IngestResult:
    """Outcome of writing a dataset; ``created`` is False when identical content already existed."""

    name: str
    version: str
    path: str
    created: bool


class ContentHasher:
    """Order-sensitive sha256 of split contents, independent of how rows are chunked."""

    def __init__(self) -> None:
        self._h = {s: [hashlib.sha256() for _ in range(4)] for s in SPLITS}

    def update(
        self,
        split: str,
        ids: Sequence[str] | pa.Array,
        x: np.ndarray,
        labels: np.ma.MaskedArray,
    ) -> None:
        """Add rows: the UTF-8 lengths (int64 LE) and bytes of ``str(id)``, x's bytes, labels.

        The id bytes and lengths are read from the Arrow string array the writer stores anyway
        (its data buffer is the concatenated UTF-8, its offsets give the lengths): the same bytes
        as encoding each id in Python, at memory speed.
        """
        strings = tables.ids_array(ids)
        offsets = np.frombuffer(
            strings.buffers()[1], np.int32, len(strings) + 1, strings.offset * 4
        )
        h_len, h_ids, h_x, h_labels = self._h[split]
        h_len.update(np.diff(offsets).astype("<i8"))
        data = strings.buffers()[2]
        if data is not None:
            h_ids.update(memoryview(data)[offsets[0] : offsets[-1]])
        h_x.update(np.ascontiguousarray(x))
        h_labels.update(np.ma.filled(labels, np.iinfo(np.int64).min).astype("<i8"))

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
    check_split(split)
    x = np.asarray(x)
    if x.size != len(ids) * dim:
        raise DatasetError(
            f"chunk of {len(ids)} ids has {x.size} values; expected {len(ids)} x {dim}"
        )
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x.reshape(len(ids), dim)).all(axis=1))[0])
        bad = ids[row].as_py() if isinstance(ids, pa.Array) else ids[row]
        raise DatasetError(f"row id {bad!r} holds NaN or Inf; clean or drop such rows first")
    return np.ascontiguousarray(x.reshape(len(ids), dim).astype(dtype, copy=False))


class DatasetWriter:
    """Streams chunks of rows into a staged new version and publishes it on `commit`.

    Use as a context manager: an exception (or `abort`) removes the stage.
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
        self.hasher = None if version else ContentHasher()
        self._version = version
        self.rows = dict.fromkeys(SPLITS, 0)
        self._lo, self._hi = math.inf, -math.inf
        self._pending: dict[str, list[pa.Table]] = {s: [] for s in SPLITS}
        self._next_file = dict.fromkeys(SPLITS, 0)
        self._stage: publish.Stage | None = None  # made with the first part file
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: list[Future] = []
        self.schema = pa.schema(
            [
                pa.field(COL_ID, pa.string(), nullable=False),
                tables.x_field(storage_dtype, self.dim),
                pa.field(COL_LABEL, pa.int64(), nullable=True),
            ]
        )

    def meta(self) -> dict:
        """Everything besides the rows that defines the content (part of the version hash)."""
        return {
            "feature_shape": list(self.shape),
            "storage_dtype": self.dtype,
            "scale": self.scale,
            "split_seed": self.split_seed,
            "label_names": list(self.label_names),
            "schema_version": SCHEMA_VERSION,
        }

    def write(
        self, split: str, ids: Sequence[str], x: np.ndarray, labels: np.ndarray | None
    ) -> None:
        """Append rows to ``split``. ``labels``: int64 array (masked entries = null) or None."""
        x = check_chunk(split, ids, x, self.dim, self.dtype)
        lab = as_labels(labels, len(ids))
        if not len(ids):
            return
        ids = tables.ids_array(ids)  # once: hashed and stored
        if self.hasher is not None:
            self.hasher.update(split, ids, x, lab)
        self.rows[split] += len(ids)
        self._lo, self._hi = min(self._lo, float(x.min())), max(self._hi, float(x.max()))
        columns = [
            ids,
            tables.encode_x(x, self.schema.field(COL_X).type),
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
        if self._stage is None:
            # The final name is unknown until the content is hashed: stage beside the versions.
            self._stage = publish.Stage(fs.join(self.base, "incoming"))
            self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="aevb-parquet")
        folder = fs.join(self._stage.uri, f"split={split}")
        fs.makedirs(folder)
        path = fs.join(folder, f"part-{self._next_file[split]:05d}.parquet")
        self._next_file[split] += 1
        self._inflight.append(self._pool.submit(self._write_file, path, table))

    def _write_file(self, path: str, table: pa.Table) -> None:
        fs.write_parquet(
            table,
            path,
            row_group_size=self.row_group_rows,
            compression=COMPRESSION,
            use_dictionary=[COL_LABEL],
            write_statistics=[COL_LABEL],
        )
        self._stage.renew()
        publish.fault_point("after_part")

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
        final = fs.join(self.base, version)
        upgrade_layout(self.root, self.name)
        created = not is_complete(self.root, self.name, version)
        if created:
            publish.fault_point("before_publish")
            self._stage.final = final  # the hash names it now
            publish.publish(
                self._stage,
                manifest_path(self.root, self.name, version),
                self._manifest(version).to_json(),
            )
        self.abort()  # removes the stage if it was not published
        publish.fault_point("before_current")
        set_current(self.root, self.name, version)
        publish.sweep_all(self.base)
        return IngestResult(self.name, version, final, created)

    def _manifest(self, version: str) -> DatasetManifest:
        return DatasetManifest(
            name=self.name,
            version=version,
            created_at=tables.now_iso(),
            source=self.source,
            feature_shape=self.shape,
            storage_dtype=self.dtype,
            scale=self.scale,
            value_range=(self._lo * self.scale, self._hi * self.scale),
            rows=dict(self.rows),
            split_seed=self.split_seed,
            label_names=self.label_names,
        )

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._stage is not None:
            self._stage.discard()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
