"""Export stage: posterior inference of z for every row -> a wide latent feature table.

    <root>/latents/<dataset>/<registered-name>/v<model-version>/part-<split>-00000.parquet
    <root>/latents/<dataset>/<registered-name>/v<model-version>/manifest.json

Columns `id`, `split`, `label`, `z_mean_0..k-1`, `z_std_0..k-1` (float32), so SQL engines and
dataframes use them directly; provenance (model URI and version, run id, dataset version) sits in the
manifest and in each file's Parquet key-value metadata. The table is written under a temporary name
and renamed into place; exporting the same model version and dataset version again is a no-op.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from tasks import datasets, storage, tracking
from tasks.logs import logger

SCHEMA_VERSION = 1
METADATA_KEY = b"aevb.provenance"


@dataclass(frozen=True)
class ExportOutput:
    path: str
    rows: int
    model_uri: str
    model_version: int | None
    dataset_version: str
    created: bool


def latent_table_path(root: str, dataset: str, model_name: str, model_version: int | str) -> str:
    return storage.join(root, "latents", dataset, model_name, f"v{model_version}")


def latent_schema(latent_dim: int) -> pa.Schema:
    fields = [
        pa.field(C.COL_ID, pa.string(), nullable=False),
        pa.field(C.COL_SPLIT, pa.string(), nullable=False),
        pa.field(C.COL_LABEL, pa.int64()),
    ]
    fields += [
        pa.field(f"{C.Z_MEAN_PREFIX}{i}", pa.float32(), nullable=False) for i in range(latent_dim)
    ]
    fields += [
        pa.field(f"{C.Z_STD_PREFIX}{i}", pa.float32(), nullable=False) for i in range(latent_dim)
    ]
    return pa.schema(fields)


def export_latents(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = C.SPLITS,
    batch_size: int = 2000,
) -> ExportOutput:
    import tensorflow as tf

    from models.saved import load_serving, read_config

    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    resolved = tracking.resolve_model(model_uri)
    model_name = resolved.name or "unregistered"
    model_version = resolved.version if resolved.version is not None else (resolved.run_id or "0")
    final = latent_table_path(root, manifest.name, model_name, model_version)
    fs, final_path = storage.filesystem(final)
    existing = storage.read_json(fs, posixpath.join(final_path, "manifest.json"))
    if (
        existing
        and existing.get("dataset_version") == manifest.version
        and existing.get("splits") == list(splits)
    ):
        logger().info(
            "export: %s already holds this model and dataset version; nothing to do", final
        )
        return ExportOutput(
            final,
            int(existing["rows"]),
            model_uri,
            resolved.version,
            manifest.version,
            created=False,
        )

    config, _ = read_config(resolved.saved_model_dir)
    encode = load_serving(resolved.saved_model_dir).signatures["encode"]
    provenance = {
        "model_uri": model_uri,
        "model_name": model_name,
        "model_version": resolved.version,
        "run_id": resolved.run_id,
        "dataset": manifest.name,
        "dataset_version": manifest.version,
        "latent_dim": config.latent_dim,
        "splits": list(splits),
        "schema_version": SCHEMA_VERSION,
    }
    schema = latent_schema(config.latent_dim).with_metadata(
        {METADATA_KEY: json.dumps(provenance).encode()}
    )
    tmp_path = f"{final_path}.tmp-{uuid.uuid4().hex[:8]}"
    fs.create_dir(tmp_path, recursive=True)
    rows = 0
    for split in splits:
        with pq.ParquetWriter(
            posixpath.join(tmp_path, f"part-{split}-00000.parquet"), schema, filesystem=fs
        ) as writer:
            for ids, x, labels in datasets.iter_batches(
                root, manifest.name, manifest.version, split, batch_size
            ):
                out = encode(x=tf.constant(x, tf.float32))
                writer.write_table(
                    _table(schema, ids, split, labels, out["z_mean"].numpy(), out["z_std"].numpy())
                )
                rows += len(ids)
    provenance.update(
        rows=rows, created_at=datetime.now(timezone.utc).isoformat(), columns=schema.names
    )
    storage.write_json(fs, posixpath.join(tmp_path, "manifest.json"), provenance)
    storage.replace_dir(fs, tmp_path, final_path)
    logger().info("export: wrote %d rows to %s", rows, final)
    return ExportOutput(final, rows, model_uri, resolved.version, manifest.version, created=True)


def _table(
    schema: pa.Schema, ids, split: str, labels, z_mean: np.ndarray, z_std: np.ndarray
) -> pa.Table:
    k = z_mean.shape[1]
    labels = np.asarray(labels)
    label_arr = (
        pa.array(labels.astype(np.int64), mask=labels < 0)
        if labels.dtype.kind in "iu"
        else pa.array(labels)
    )
    cols = [pa.array(np.asarray(ids).astype(str)), pa.array([split] * len(ids)), label_arr]
    cols += [pa.array(z_mean[:, i].astype(np.float32)) for i in range(k)]
    cols += [pa.array(z_std[:, i].astype(np.float32)) for i in range(k)]
    return pa.Table.from_arrays(cols, schema=schema)


export_task = task(export_latents, name="export", cache_policy=NO_CACHE)
