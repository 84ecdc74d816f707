"""tf.data input pipelines over a Parquet dataset split: streaming with a bounded shuffle buffer,
or an in-memory fast path for splits that fit.

Both yield float32 [B, D] model inputs (stored value * scale, converted inside the pipeline so the
buffers hold the compact storage dtype). Shuffling is deterministic for (seed, epoch):

- in memory: one numpy permutation of the whole split per (seed, epoch);
- streaming: row groups are visited in a seeded random order, and rows are drawn from a pool of
  ``shuffle_buffer`` rows refilled one row group at a time. Memory is bounded by
  shuffle_buffer + one row group + prefetched batches, not by the number of rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import tensorflow as tf

from models.constants import COL_ID, COL_LABEL, COL_X
from models.errors import DatasetError
from tasks.datasets import (
    DatasetManifest,
    _open_parquet,
    batch_to_numpy,
    load_manifest,
    read_split_storage,
    split_files,
)

IN_MEMORY_MAX_BYTES = 256 << 20  # storage bytes of a split below which the fast path is used


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0xAE7B])


def _row_groups(files: list[str]) -> list[tuple[str, int]]:
    units = []
    for path in files:
        with _open_parquet(path) as pf:
            units.extend((path, g) for g in range(pf.num_row_groups))
    return units


def stream_storage_rows(
    manifest: DatasetManifest, order: list[tuple[str, int]]
) -> Iterator[np.ndarray]:
    """x (storage dtype, [rows, D]) of each row group in ``order``, one group in memory at a time."""
    with contextlib.ExitStack() as stack:
        current, pf = None, None
        for path, group in order:
            if path != current:
                stack.close()
                pf, current = stack.enter_context(_open_parquet(path)), path
            table: pa.Table = pf.read_row_group(group, columns=[COL_ID, COL_X, COL_LABEL])
            yield batch_to_numpy(table, manifest)[1]


def _batches(
    chunks: Iterator[np.ndarray],
    batch_size: int,
    *,
    rng: np.random.Generator | None,
    pool_rows: int,
    drop_remainder: bool,
) -> Iterator[np.ndarray]:
    """Re-batch row chunks to ``batch_size``; with ``rng``, shuffle within pools of >= pool_rows."""
    pool: list[np.ndarray] = []
    pooled = 0
    target = max(pool_rows, batch_size) if rng is not None else batch_size
    for chunk in chunks:
        pool.append(chunk)
        pooled += len(chunk)
        if pooled < target:
            continue
        rows = np.concatenate(pool) if len(pool) > 1 else pool[0]
        if rng is not None:
            rows = rows[rng.permutation(len(rows))]
        full = len(rows) // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield rows[start : start + batch_size]
        pool, pooled = ([rows[full:]], len(rows) - full) if full < len(rows) else ([], 0)
    if pooled:
        rows = np.concatenate(pool) if len(pool) > 1 else pool[0]
        if rng is not None:
            rows = rows[rng.permutation(len(rows))]
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            if len(batch) == batch_size or not drop_remainder:
                yield batch


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
) -> tf.data.Dataset:
    """float32 [B, D] batches of one split; see the module docstring for order and memory."""
    if batch_size <= 0:
        raise DatasetError(f"batch_size={batch_size} must be > 0")
    manifest = load_manifest(data_root, name, version)
    dim, dtype = manifest.input_dim, np.dtype(manifest.storage_dtype)
    if in_memory is None:
        in_memory = manifest.rows.get(split, 0) * dim * dtype.itemsize <= IN_MEMORY_MAX_BYTES
    rng = _rng(seed, epoch) if shuffle else None
    if in_memory:
        x = read_split_storage(data_root, manifest, split)[1]
        if rng is not None:
            x = x[rng.permutation(len(x))]
        ds = tf.data.Dataset.from_tensor_slices(x).batch(batch_size, drop_remainder=drop_remainder)
    else:
        files = split_files(data_root, manifest.name, manifest.version, split)

        def generate() -> Iterator[np.ndarray]:
            order = _row_groups(files)
            if rng is not None:
                order = [order[i] for i in rng.permutation(len(order))]
            chunks = stream_storage_rows(manifest, order)
            yield from _batches(
                chunks, batch_size, rng=rng, pool_rows=shuffle_buffer, drop_remainder=drop_remainder
            )

        spec = tf.TensorSpec([batch_size if drop_remainder else None, dim], tf.as_dtype(dtype))
        ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    scale = tf.constant(manifest.scale, tf.float32)
    ds = ds.map(lambda b: tf.cast(b, tf.float32) * scale, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(2)


def steps_per_epoch(
    manifest: DatasetManifest, split: str, batch_size: int, drop_remainder: bool
) -> int:
    """Number of batches one pass over ``split`` yields."""
    rows = manifest.rows.get(split, 0)
    return rows // batch_size if drop_remainder else math.ceil(rows / batch_size)
