"""Restored tables: layout, schema, atomic publication, and the lock-step readers of restoration.

    <root>/restored/<dataset>/<registered-name>/v<model-version>/<method>/part-<split>-00000.parquet
    <root>/restored/<dataset>/<registered-name>/v<model-version>/<method>/manifest.json

`<method>` is amortized | map | pseudo-gibbs | mwg, or from-latents for decoded latent tables.
Columns: `id` (string), `split` (string), `label` (int64, nullable) and `x`, a fixed-size list of
D float32 values in model space - the same feature encoding as the dataset store, so a restored
table reads like a dataset split. The manifest (also in each file's Parquet key-value metadata)
records the model, the degraded dataset version, the degradation, the method's settings and the
PSNR/MSE. Tables are written into a hidden sibling folder and swapped into place like latent
tables (tasks/export.py `publish_dir`), so a killed run leaves the previous table or nothing.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models import constants as C
from models.errors import DatasetError
from tasks import datasets, export, storage

METADATA_KEY = b"aevb.restore"
SCHEMA_VERSION = 1


def restored_table_path(
    root: str, dataset: str, model_name: str, model_version: int | str, method: str
) -> str:
    return storage.join(root, "restored", dataset, model_name, f"v{model_version}", method)


def restored_schema(input_dim: int, provenance: dict[str, Any]) -> pa.Schema:
    return pa.schema(
        [
            pa.field(C.COL_ID, pa.string(), nullable=False),
            pa.field(C.COL_SPLIT, pa.string(), nullable=False),
            pa.field(C.COL_LABEL, pa.int64()),
            pa.field(C.COL_X, pa.list_(pa.float32(), input_dim), nullable=False),
        ],
        metadata={METADATA_KEY: json.dumps(provenance).encode()},
    )


def batch_table(
    schema: pa.Schema, ids: Any, split: str, labels: np.ndarray | pa.Array, x: np.ndarray
) -> pa.Table:
    """One written batch; ``labels`` int64 with NULL_LABEL (-1) for null, or an Arrow array."""
    n = len(x)
    if isinstance(labels, np.ndarray):
        labels = pa.array(labels, pa.int64(), mask=labels == datasets.NULL_LABEL)
    flat = pa.array(np.ascontiguousarray(x, np.float32).reshape(-1))
    cols = [
        pa.array([str(i) for i in ids], pa.string()) if isinstance(ids, np.ndarray) else ids,
        pa.array([split] * n, pa.string()),
        labels.cast(pa.int64()),
        pa.FixedSizeListArray.from_arrays(flat, type=schema.field(C.COL_X).type),
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def existing_manifest(final: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The published table's manifest when it was written with the same ``key`` (else None)."""
    fs, path = storage.filesystem(final)
    export._recover(fs, path)  # put back a table stranded by a killed swap; drop stale temps
    doc = storage.read_json(fs, posixpath.join(path, "manifest.json"))
    if doc and doc.get("key") == json.loads(json.dumps(key)):
        return doc
    return None


def publish_table(
    final: str,
    schema: pa.Schema,
    fill: Callable[[Callable[[str], pq.ParquetWriter]], dict[str, Any]],
) -> dict[str, Any]:
    """Write a table into a hidden temp folder and swap it into ``final``.

    ``fill(open_part)`` writes the parts (``open_part(split)`` returns a ParquetWriter) and returns
    what the manifest adds to the schema's provenance (rows, metrics); returns the manifest.
    """
    fs, final_path = storage.filesystem(final)
    parent, leaf = posixpath.split(final_path)
    tmp = posixpath.join(parent, f".{leaf}.tmp-{uuid.uuid4().hex[:8]}")
    fs.create_dir(tmp, recursive=True)

    def open_part(split: str) -> pq.ParquetWriter:
        path = posixpath.join(tmp, f"part-{split}-00000.parquet")
        return pq.ParquetWriter(path, schema, filesystem=fs)

    try:
        extra = fill(open_part)
        doc = json.loads(schema.metadata[METADATA_KEY])
        doc.update(extra, created_at=datetime.now(timezone.utc).isoformat(), columns=schema.names)
        storage.write_json(fs, posixpath.join(tmp, "manifest.json"), doc)
        export._fault_point("restore_before_swap")
        export.publish_dir(fs, tmp, final_path)
    finally:
        with contextlib.suppress(OSError):
            fs.delete_dir(tmp)
    return doc


def lockstep(
    root: str,
    degraded: datasets.DatasetManifest,
    others: list[datasets.DatasetManifest | None],
    split: str,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray | None]]]:
    """(ids, y, labels, [x of each other dataset or None]) batch by batch; the other datasets
    (mask, clean reference) must hold the same ids in the same order."""
    streams = [
        None if m is None else datasets.iter_batches(root, m.name, m.version, split, batch_size)
        for m in others
    ]
    for ids, y, labels in datasets.iter_batches(
        root, degraded.name, degraded.version, split, batch_size
    ):
        rows = []
        for m, stream in zip(others, streams, strict=True):
            if stream is None:
                rows.append(None)
                continue
            o_ids, o_x, _ = next(stream, (np.empty(0, object), None, None))
            if len(o_ids) != len(ids) or not np.array_equal(o_ids, ids):
                raise DatasetError(
                    f"dataset {m.name!r} version {m.version} does not hold the rows of "
                    f"{degraded.name!r} ({split}) in the same order; recreate the degraded copy "
                    "with `aevb corrupt` (or pass a --mask made for these rows)"
                )
            rows.append(o_x)
        yield ids, y, labels, rows
    for m, stream in zip(others, streams, strict=True):
        if stream is not None and next(stream, None) is not None:
            raise DatasetError(
                f"dataset {m.name!r} version {m.version} holds more {split} rows than "
                f"{degraded.name!r}; recreate the degraded copy with `aevb corrupt`"
            )


def latent_parts(table: str) -> tuple[pafs.FileSystem, list[str], dict[str, Any]]:
    """(filesystem, sorted part files, manifest or {}) of a latent table folder or one file."""
    fs, path = storage.filesystem(table)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return fs, [path], {}
    if info.type != pafs.FileType.Directory:
        raise DatasetError(
            f"--from-latents {table}: no such latent table; give the folder `aevb export` printed "
            "(<data-root>/latents/<dataset>/<model>/v<N>) or a Parquet file"
        )
    found = fs.get_file_info(pafs.FileSelector(path))
    parts = sorted(
        i.path for i in found if i.is_file and i.base_name.endswith(".parquet")
        and not i.base_name.startswith((".", "_"))
    )  # fmt: skip
    if not parts:
        raise DatasetError(f"--from-latents {table}: the folder holds no Parquet files")
    manifest = storage.read_json(fs, posixpath.join(path, "manifest.json")) or {}
    return fs, parts, manifest


def iter_latents(
    fs: pafs.FileSystem, parts: list[str], latent_dim: int, batch_size: int
) -> Iterator[tuple[str, pa.Array, pa.Array, np.ndarray]]:
    """(split, ids, labels, z_mean float32 [B, k]) in stored order, one file batch at a time."""
    want = [f"{C.Z_MEAN_PREFIX}{i}" for i in range(latent_dim)]
    for path in parts:
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            missing = [c for c in [C.COL_ID, *want] if c not in names]
            extra = [n for n in names if n.startswith(C.Z_MEAN_PREFIX) and n not in want]
            if missing or extra:
                found = sum(n.startswith(C.Z_MEAN_PREFIX) for n in names)
                raise DatasetError(
                    f"--from-latents {path}: the model has latent_dim={latent_dim} and needs "
                    f"columns id, z_mean_0..z_mean_{latent_dim - 1}; the table has {found} z_mean "
                    "columns: decode it with the model that exported it"
                )
            cols = [c for c in (C.COL_ID, C.COL_SPLIT, C.COL_LABEL) if c in names] + want
            for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                z = np.stack([rb.column(c).to_numpy(zero_copy_only=False) for c in want], 1)
                split = rb.column(C.COL_SPLIT) if C.COL_SPLIT in names else None
                labels = rb.column(C.COL_LABEL) if C.COL_LABEL in names else pa.nulls(len(z))
                ids = rb.column(C.COL_ID).cast(pa.string())
                for s in split.unique().to_pylist() if split is not None else ["all"]:
                    sel = (
                        np.asarray(split.to_numpy(zero_copy_only=False) == s)
                        if split is not None else np.ones(len(z), bool)
                    )  # fmt: skip
                    idx = pa.array(np.flatnonzero(sel))
                    yield s, ids.take(idx), labels.take(idx), z[sel].astype(np.float32)
