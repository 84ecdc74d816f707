"""Arrow codecs and folder layout of what the stages publish besides datasets.

- the `x` column of datasets and restored tables (`x_type`, `x_field`, `encode_x`, `decode_x`):
  uint8 rows as `fixed_size_binary(D)` (the D bytes of a row as one Parquet value), float32 rows
  as `fixed_size_list<float32>[D]`; datasets written before uint8 moved to binary hold
  `fixed_size_list<uint8>[D]` and stay readable. Decoded to a [rows, D] numpy array without
  copying where Arrow allows it. Why binary for uint8 (measured by bench/ingest_throughput.py):
  a list column makes Parquet write D values per row with repetition/definition levels, the
  binary column one value per row: several times cheaper to write and read, half the file size.
  float32 keeps its list type: the gain is smaller and SQL engines see floats, not bytes;
- latent tables (export) and score tables (`aevb score`): `id`, `split`, `label`, `z_mean_0..k-1`,
  `z_std_0..k-1` (float32, wide), the per-row scores `elbo` (unless export.elbo = false: codes
  only) and optionally `log_px` (float64), and optionally `z_samples` (K draws per row, a
  fixed-size list of K fixed-size lists of k);
- restored tables (restore): `id`, `split`, `label`, `x` (D float32, model space).

Every table is a folder of Parquet files only, with its manifest beside it
(`<folder>.manifest.json`), so `pd.read_parquet(folder)` and `**` globs read it as is. Provenance
is in the manifest and in each file's Parquet key-value metadata. Tables written by earlier
releases kept `manifest.json` inside the folder; they stay readable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from models import constants as C
from models.errors import DatasetError
from tasks.store import fs, publish

MANIFEST_SUFFIX = ".manifest.json"
LEGACY_MANIFEST = "manifest.json"
LATENT_METADATA_KEY = b"aevb.provenance"
RESTORED_METADATA_KEY = b"aevb.restore"
SAMPLES_COLUMN = "z_samples"
NULL_LABEL = -1
SCHEMA_VERSION = 1
# Latent and score tables: 2 added the per-row anomaly scores `elbo` and (optionally) `log_px`.
LATENT_SCHEMA_VERSION = 2
ELBO_COLUMN = "elbo"
LOG_PX_COLUMN = "log_px"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- x column


X_DTYPE_KEY = b"aevb.storage_dtype"  # x field metadata: the dtype of a binary column's values
_LITTLE_ENDIAN = {"uint8": "u1", "float32": "<f4"}


def x_type(storage_dtype: str, dim: int) -> pa.DataType:
    """The Arrow type of a D-value x column: binary(D) for uint8, list<float32>[D] for float32."""
    if storage_dtype == "uint8":
        return pa.binary(dim)
    return pa.list_(pa.float32(), dim)


def x_field(storage_dtype: str, dim: int) -> pa.Field:
    """The x field of a dataset: `x_type`, not nullable, its storage dtype in the metadata."""
    meta = {X_DTYPE_KEY: storage_dtype.encode()}
    return pa.field(C.COL_X, x_type(storage_dtype, dim), nullable=False, metadata=meta)


def x_dtype(field: pa.Field, dim: int) -> str:
    """The storage dtype ("uint8" | "float32") of an x field of D values, in either layout."""
    kind = field.type
    if pa.types.is_fixed_size_binary(kind):
        meta = (field.metadata or {}).get(X_DTYPE_KEY)
        return meta.decode() if meta else "uint8" if kind.byte_width == dim else "float32"
    return "uint8" if kind.value_type == pa.uint8() else "float32"


def encode_x(x: np.ndarray, kind: pa.DataType) -> pa.Array:
    """[rows, D] array -> the x column of type ``kind`` (fixed-size binary or list; no copy)."""
    x = np.ascontiguousarray(x)
    if pa.types.is_fixed_size_binary(kind):
        if x.ndim != 2 or x.shape[1] * x.itemsize != kind.byte_width:
            raise ValueError(f"x of shape {x.shape} ({x.dtype}) does not fill {kind} rows")
        little = x.astype(x.dtype.newbyteorder("<"), copy=False)
        return pa.FixedSizeBinaryArray.from_buffers(kind, len(x), [None, pa.py_buffer(little)])
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), kind.value_type), type=kind)


def _chunk_values(chunk: pa.Array, dtype: str, dim: int) -> np.ndarray:
    if chunk.null_count:
        raise DatasetError(f"the x column holds {chunk.null_count} null rows; re-ingest the data")
    if not pa.types.is_fixed_size_binary(chunk.type):
        return chunk.flatten().to_numpy(zero_copy_only=False)
    width = chunk.type.byte_width
    little = np.dtype(_LITTLE_ENDIAN[dtype])
    if width != dim * little.itemsize:
        raise DatasetError(f"x rows of {width} bytes are not {dim} {dtype} values")
    return np.frombuffer(chunk.buffers()[1], little, len(chunk) * dim, chunk.offset * width)


def decode_x(column: pa.Array | pa.ChunkedArray, dtype: str, dim: int) -> np.ndarray:
    """The x column (either layout) as a [rows, D] array of ``dtype`` (the storage dtype)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [_chunk_values(c, dtype, dim) for c in chunks]
    if not parts:
        return np.empty((0, dim), dtype)
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return flat.astype(dtype, copy=False).reshape(-1, dim)


def labels_array(labels: np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    """int64 labels with ``NULL_LABEL`` (-1) for null, or an Arrow array, as an Arrow int64 array."""
    if isinstance(labels, np.ndarray):
        return pa.array(labels, pa.int64(), mask=labels == NULL_LABEL)
    return labels.cast(pa.int64())


def ids_array(ids: Sequence[Any] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """``str(id)`` of each id as an Arrow string array (one chunk)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, pa.Array):
        return ids if ids.type == pa.string() else ids.cast(pa.string())
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "OU":
        try:  # an array of str objects converts in C; anything else takes str() below
            strings = pa.array(ids)
            if strings.type == pa.string() and not strings.null_count:
                return strings
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            pass
    return pa.array([str(i) for i in ids], pa.string())


# ----------------------------------------------------------------------------- latent tables


def latent_table_path(root: str, dataset: str, model_name: str, model_version: int | str) -> str:
    return fs.join(root, "latents", dataset, model_name, f"v{model_version}")


def score_table_path(
    root: str, dataset: str, model_name: str, model_version: int | str, dataset_version: str
) -> str:
    """`<root>/scores/<dataset>/<model>/v<N>/<dataset-version>`: one table per scored version."""
    return fs.join(root, "scores", dataset, model_name, f"v{model_version}", dataset_version)


def score_columns(log_px_samples: int, elbo: bool = True) -> tuple[str, ...]:
    """The anomaly-score columns of a latent table: `elbo` (unless ``elbo`` is false: a table of
    codes only, export.elbo), plus `log_px` when K > 0."""
    return ((ELBO_COLUMN,) if elbo else ()) + ((LOG_PX_COLUMN,) if log_px_samples else ())


def latent_schema(
    latent_dim: int,
    samples: int = 0,
    provenance: dict | None = None,
    scores: tuple[str, ...] = (),
) -> pa.Schema:
    fields = [
        pa.field(C.COL_ID, pa.string(), nullable=False),
        pa.field(C.COL_SPLIT, pa.string(), nullable=False),
        pa.field(C.COL_LABEL, pa.int64()),
    ]
    for prefix in (C.Z_MEAN_PREFIX, C.Z_STD_PREFIX):
        fields += [
            pa.field(f"{prefix}{i}", pa.float32(), nullable=False) for i in range(latent_dim)
        ]
    fields += [pa.field(name, pa.float64(), nullable=False) for name in scores]
    if samples:
        inner = pa.list_(pa.field("item", pa.float32(), nullable=False), latent_dim)
        fields.append(pa.field(SAMPLES_COLUMN, pa.list_(inner, samples), nullable=False))
    metadata = {LATENT_METADATA_KEY: json.dumps(provenance).encode()} if provenance else None
    return pa.schema(fields, metadata=metadata)


def latent_batch(
    schema: pa.Schema,
    ids: Any,
    split: str,
    labels: Any,
    z_mean: np.ndarray,
    z_std: np.ndarray,
    z_samples: np.ndarray | None = None,
    scores: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """One written batch of a latent table; ``z_samples`` [B, K, k] and ``scores`` (column ->
    [B]) when the schema has them."""
    n, k = z_mean.shape
    cols = [ids_array(ids), pa.array([split] * n, pa.string()), labels_array(labels)]
    cols += [pa.array(np.ascontiguousarray(z_mean[:, i], np.float32)) for i in range(k)]
    cols += [pa.array(np.ascontiguousarray(z_std[:, i], np.float32)) for i in range(k)]
    names = [c for c in (ELBO_COLUMN, LOG_PX_COLUMN) if c in schema.names]
    cols += [pa.array(np.asarray((scores or {})[c], np.float64)) for c in names]
    if z_samples is not None:
        kind = schema.field(SAMPLES_COLUMN).type
        flat = pa.array(np.ascontiguousarray(z_samples, np.float32).reshape(-1))
        inner = pa.FixedSizeListArray.from_arrays(flat, type=kind.value_type)
        cols.append(pa.FixedSizeListArray.from_arrays(inner, type=kind))
    return pa.Table.from_arrays(cols, schema=schema)


# ----------------------------------------------------------------------------- restored tables


def restored_table_path(
    root: str, dataset: str, model_name: str, model_version: int | str, method: str
) -> str:
    return fs.join(root, "restored", dataset, model_name, f"v{model_version}", method)


def restored_schema(input_dim: int, provenance: dict[str, Any]) -> pa.Schema:
    return pa.schema(
        [
            pa.field(C.COL_ID, pa.string(), nullable=False),
            pa.field(C.COL_SPLIT, pa.string(), nullable=False),
            pa.field(C.COL_LABEL, pa.int64()),
            pa.field(C.COL_X, pa.list_(pa.float32(), input_dim), nullable=False),
        ],
        metadata={RESTORED_METADATA_KEY: json.dumps(provenance).encode()},
    )


def restored_batch(schema: pa.Schema, ids: Any, split: str, labels: Any, x: np.ndarray) -> pa.Table:
    """One written batch of a restored table (x float32 [B, D], model space)."""
    cols = [
        ids_array(ids),
        pa.array([split] * len(x), pa.string()),
        labels_array(labels),
        encode_x(np.asarray(x, np.float32), schema.field(C.COL_X).type),
    ]
    return pa.Table.from_arrays(cols, schema=schema)


# ----------------------------------------------------------------------------- sample tables


def samples_path(root: str, model_name: str, model_version: int | str, tag: str) -> str:
    """`<root>/samples/<model>/v<N>/<tag>`: one folder per (model version, settings)."""
    return fs.join(root, "samples", model_name, f"v{model_version}", tag)


def samples_schema(latent_dim: int, input_dim: int, draws: bool, provenance: dict) -> pa.Schema:
    """`id`, `z_0..z_{k-1}` (float32, wide), `x_mean` and optionally `x_draw` (D float32)."""
    fields = [pa.field(C.COL_ID, pa.string(), nullable=False)]
    fields += [pa.field(f"z_{i}", pa.float32(), nullable=False) for i in range(latent_dim)]
    for name in ("x_mean", "x_draw") if draws else ("x_mean",):
        fields.append(pa.field(name, pa.list_(pa.float32(), input_dim), nullable=False))
    return pa.schema(fields, metadata={b"aevb.samples": json.dumps(provenance).encode()})


def samples_table(
    schema: pa.Schema, z: np.ndarray, x_mean: np.ndarray, x_draw: np.ndarray | None
) -> pa.Table:
    ids = ids_array([f"sample-{i:06d}" for i in range(len(z))])
    cols = [ids] + [pa.array(np.ascontiguousarray(z[:, i], np.float32)) for i in range(z.shape[1])]
    for x in (x_mean,) if x_draw is None else (x_mean, x_draw):
        cols.append(encode_x(np.asarray(x, np.float32), schema.field("x_mean").type))
    return pa.Table.from_arrays(cols, schema=schema)


# ----------------------------------------------------------------------------- table folders


def manifest_path(folder: str) -> str:
    return folder.rstrip("/") + MANIFEST_SUFFIX


def read_manifest(folder: str) -> dict[str, Any] | None:
    """A published table's manifest (beside the folder; inside it for older releases) or None."""
    doc = fs.read_json(manifest_path(folder))
    if doc is None and fs.is_dir(folder):
        doc = fs.read_json(fs.join(folder, LEGACY_MANIFEST))
    return doc


def part_files(folder: str) -> list[str]:
    """The folder's Parquet part files in name order (hidden and underscore files skipped)."""
    names = [n for n in fs.list_files(folder) if n.endswith(".parquet")]
    return [fs.join(folder, n) for n in names if not n.startswith((".", "_"))]


def publish_table(final: str, fill: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Fill a staged folder and publish it at ``final`` with its manifest beside it.

    ``fill(stage_folder)`` writes the part files and returns the manifest document; a kill at any
    moment leaves the previous table (or none) at ``final``, never a partial one.
    """
    publish.recover(final)
    with publish.Stage(final) as stage:
        with fs.storage_guard(final):  # a part that hit a full disk: one line, stage removed
            doc = fill(stage.uri)
        doc.setdefault("created_at", now_iso())
        publish.fault_point("table_before_publish")
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        publish.publish(stage, manifest_path(final), text)
    return doc


def latent_parts(table: str) -> tuple[list[str], dict[str, Any]]:
    """(sorted part files, manifest or {}) of a latent table folder or of one Parquet file."""
    if fs.is_file(table):
        return [table], {}
    if not fs.is_dir(table):
        raise DatasetError(
            f"latent table {table}: not found; give the folder `aevb export` printed "
            "(<data-root>/latents/<dataset>/<model>/v<N>) or a Parquet file"
        )
    parts = part_files(table)
    if not parts:
        raise DatasetError(f"latent table {table}: the folder holds no Parquet files")
    return parts, read_manifest(table) or {}


def iter_latents(
    parts: list[str], latent_dim: int, batch_size: int
) -> Iterator[tuple[str, pa.Array, pa.Array, np.ndarray]]:
    """(split, ids, labels, z_mean float32 [B, k]) in stored order, one file batch at a time."""
    want = [f"{C.Z_MEAN_PREFIX}{i}" for i in range(latent_dim)]
    for path in parts:
        with fs.open_parquet(path) as pf:
            names = pf.schema_arrow.names
            missing = [c for c in [C.COL_ID, *want] if c not in names]
            extra = [n for n in names if n.startswith(C.Z_MEAN_PREFIX) and n not in want]
            if missing or extra:
                found = sum(n.startswith(C.Z_MEAN_PREFIX) for n in names)
                raise DatasetError(
                    f"latent table {path}: the model has latent_dim={latent_dim} and needs "
                    f"columns id, z_mean_0..z_mean_{latent_dim - 1}; the table has {found} z_mean "
                    "columns: decode it with the model that exported it"
                )
            cols = [c for c in (C.COL_ID, C.COL_SPLIT, C.COL_LABEL) if c in names] + want
            for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                yield from _latent_batch_by_split(rb, names, want)


def _latent_batch_by_split(rb: pa.RecordBatch, names: list[str], want: list[str]):
    z = np.stack([rb.column(c).to_numpy(zero_copy_only=False) for c in want], 1)
    split = rb.column(C.COL_SPLIT) if C.COL_SPLIT in names else None
    labels = rb.column(C.COL_LABEL) if C.COL_LABEL in names else pa.nulls(len(z), pa.int64())
    ids = rb.column(C.COL_ID).cast(pa.string())
    if split is None:
        yield "all", ids, labels, z.astype(np.float32)
        return
    values = np.asarray(split.to_numpy(zero_copy_only=False))
    for s in split.unique().to_pylist():
        idx = pa.array(np.flatnonzero(values == s))
        yield s, ids.take(idx), labels.take(idx), z[values == s].astype(np.float32)


def output_table_path(
    root: str, manifest: Any, model_name: str, model_version: int | str, scores_table: bool
) -> str:
    """Where export (latents/, one table per model version) or score (scores/, one per dataset
    version) publishes the table of a dataset ``manifest``."""
    if scores_table:
        return score_table_path(root, manifest.name, model_name, model_version, manifest.version)
    return latent_table_path(root, manifest.name, model_name, model_version)
