"""Reading dataset splits: whole splits in memory, or streamed in stored order in batches.

Rows come back as (ids [N] str objects, x [N, D], labels int64 [N] with -1 for null). ``x`` is in
the storage dtype (`*_storage` functions) or as float32 model inputs (stored value * scale).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from models.constants import COL_ID, COL_LABEL, COL_X, SPLITS
from models.errors import DatasetError
from tasks.store import fs, tables
from tasks.store.datasets import DatasetManifest, load_manifest, version_dir

Rows = tuple[np.ndarray, np.ndarray, np.ndarray]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def split_files(data_root: str | None, name: str, version: str, split: str) -> list[str]:
    """Sorted part files of one split (empty list for an empty split)."""
    folder = fs.join(version_dir(data_root, name, version), f"split={check_split(split)}")
    return tables.part_files(folder)


def batch_to_numpy(batch: pa.RecordBatch | pa.Table, manifest: DatasetManifest) -> Rows:
    """(ids object [N], x in storage dtype [N, D], labels int64 [N] with -1 for null)."""
    x = tables.decode_x(batch.column(COL_X), manifest.storage_dtype, manifest.input_dim)
    ids = np.asarray(batch.column(COL_ID).to_pylist(), dtype=object)
    labels = batch.column(COL_LABEL).fill_null(tables.NULL_LABEL).to_numpy(zero_copy_only=False)
    return ids, x, labels.astype(np.int64, copy=False)


def to_model_space(x: np.ndarray, scale: float) -> np.ndarray:
    """Stored values -> float32 model inputs (stored value * scale)."""
    out = x.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def read_split_storage(data_root: str | None, manifest: DatasetManifest, split: str) -> Rows:
    """The whole split in memory; x stays in the storage dtype (uint8 stays 1 byte per value)."""
    files = split_files(data_root, manifest.name, manifest.version, split)
    if not files:
        empty = np.empty((0, manifest.input_dim), dtype=manifest.storage_dtype)
        return np.empty(0, dtype=object), empty, np.empty(0, dtype=np.int64)
    return batch_to_numpy(pa.concat_tables([fs.read_parquet(f) for f in files]), manifest)


def read_split(data_root: str | None, name: str, version: str | None, split: str) -> Rows:
    """Whole split in memory: ids [N] (str objects), x float32 [N, D] model space, labels int64."""
    manifest = load_manifest(data_root, name, version)
    ids, x, labels = read_split_storage(data_root, manifest, split)
    return ids, to_model_space(x, manifest.scale), labels


def iter_record_batches(
    data_root: str | None, manifest: DatasetManifest, split: str, batch_size: int
) -> Iterator[pa.RecordBatch]:
    """The split's Arrow record batches in stored order, at most ``batch_size`` rows each (a
    batch never spans two part files)."""
    if batch_size <= 0:
        raise DatasetError(f"batch_size={batch_size} must be > 0")
    for path in split_files(data_root, manifest.name, manifest.version, split):
        with fs.open_parquet(path) as pf:
            yield from pf.iter_batches(batch_size=batch_size)


def iter_storage_batches(
    data_root: str | None, manifest: DatasetManifest, split: str, batch_size: int
) -> Iterator[Rows]:
    """Ordered batches of exactly ``batch_size`` rows (last may be short), x in storage dtype."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for rb in iter_record_batches(data_root, manifest, split, batch_size):
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
) -> Iterator[Rows]:
    """Stream a split in stored order: (ids [B], x float32 [B, D] model space, labels int64 [B]).

    Memory is bounded by one Parquet row group plus one batch, not by the split's size.
    """
    manifest = load_manifest(data_root, name, version)
    for ids, x, labels in iter_storage_batches(data_root, manifest, split, batch_size):
        yield ids, to_model_space(x, manifest.scale), labels


def iter_aligned(
    data_root: str | None,
    main: DatasetManifest,
    others: list[DatasetManifest | None],
    split: str,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray | None]]]:
    """(ids, x, labels, [x of each other dataset or None]) batch by batch, x float32 model space.

    The other datasets (a mask, a clean reference) must hold the same ids in the same order.
    """
    streams = [
        None if m is None else iter_batches(data_root, m.name, m.version, split, batch_size)
        for m in others
    ]
    for ids, x, labels in iter_batches(data_root, main.name, main.version, split, batch_size):
        rows = []
        for m, stream in zip(others, streams, strict=True):
            if stream is None:
                rows.append(None)
                continue
            o_ids, o_x, _ = next(stream, (np.empty(0, object), None, None))
            if len(o_ids) != len(ids) or not np.array_equal(o_ids, ids):
                raise DatasetError(
                    f"dataset {m.name!r} version {m.version} does not hold the rows of "
                    f"{main.name!r} ({split}) in the same order; recreate the degraded copy "
                    "with `aevb corrupt` (or pass a mask made for these rows)"
                )
            rows.append(o_x)
        yield ids, x, labels, rows
    for m, stream in zip(others, streams, strict=True):
        if stream is not None and next(stream, None) is not None:
            raise DatasetError(
                f"dataset {m.name!r} version {m.version} holds more {split} rows than "
                f"{main.name!r}; recreate the degraded copy with `aevb corrupt`"
            )


def read_ahead(items: Iterator, depth: int = 2) -> Iterator:
    """Yield ``items`` while a thread produces up to ``depth`` more (Parquet decode and numpy
    conversion release the GIL, so reading overlaps the consumer's TensorFlow work). An error in
    the producer is raised here; a consumer that stops early stops the producer too."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((end, exc))
            return
        put((end, None))

    thread = threading.Thread(target=produce, name="aevb-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()
