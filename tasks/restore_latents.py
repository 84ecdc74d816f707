"""Restore from latent tables: decode a latent table's z_mean rows back to data space.

`decode_latents(model_uri, TABLE)` reads an exported latent table (tasks/export.py; a folder or
one Parquet file with `id`, `z_mean_0..k-1` and optionally `split`, `label`) batch by batch and
publishes x = E[x | z_mean] (the decoder mean of the registry model) as a restored table under
`<root>/restored/<dataset>/<model>/v<N>/from-latents/` (tasks/restore_io.py). Idempotent for
the same table files and model version; memory is bounded by one batch.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.errors import ConfigError
from tasks import datasets, restore_io
from tasks.logs import logger
from tasks.restore import RestoreOutput, load_model, model_key

FROM_LATENTS = "from-latents"


def decode_latents(
    model_uri: str, table: str, data_root: str | None = None, batch_size: int = 2000
) -> RestoreOutput:
    """Decode a latent table's z_mean rows with the registry model: x = E[x | z] per row."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be >= 1")
    root = datasets.resolve_data_root(data_root)
    fs, parts, manifest = restore_io.latent_parts(table)
    resolved, vae = load_model(model_uri)
    name, mversion = model_key(resolved)
    dataset = manifest.get("dataset") or "table-" + hashlib.sha256(table.encode()).hexdigest()[:8]
    final = restore_io.restored_table_path(root, dataset, name, mversion, FROM_LATENTS)
    stamps = [fs.get_file_info(f).mtime_ns for f in parts]
    key = {
        "table": table,
        "parts": [posixpath.basename(f) for f in parts],
        "mtimes": stamps,
        "table_manifest": {k: manifest.get(k) for k in ("model_version", "dataset_version")},
    }
    out = dict(path=final, method=FROM_LATENTS, kind=FROM_LATENTS, model_uri=model_uri,
               model_version=resolved.version, dataset=dataset,
               dataset_version=str(manifest.get("dataset_version", "")))  # fmt: skip
    done = restore_io.existing_manifest(final, key)
    if done:
        return RestoreOutput(rows=done["rows"], created=False, **out)
    if manifest and (manifest.get("model_name"), manifest.get("model_version")) != (
        name,
        resolved.version,
    ):
        logger().warning(
            "restore: %s was exported by %s v%s, decoding with %s v%s: codes of another model "
            "version mean other images", table, manifest.get("model_name"),
            manifest.get("model_version"), name, resolved.version,
        )  # fmt: skip
    import tensorflow as tf

    decode = tf.function(vae.decode_mean, jit_compile=True, reduce_retracing=True)
    provenance = {"model_uri": model_uri, "model_name": name, "model_version": resolved.version,
                  "run_id": resolved.run_id, "dataset": dataset, "key": key,
                  "schema_version": restore_io.SCHEMA_VERSION}  # fmt: skip
    schema = restore_io.restored_schema(vae.config.input_dim, provenance)

    def fill(open_part) -> dict[str, Any]:
        writers, rows = {}, 0
        try:
            for split, ids, labels, z in restore_io.iter_latents(
                fs, parts, vae.config.latent_dim, batch_size
            ):
                if split not in writers:
                    writers[split] = open_part(split)
                x = decode(tf.constant(z)).numpy()
                writers[split].write_table(restore_io.batch_table(schema, ids, split, labels, x))
                rows += len(z)
        finally:
            for w in writers.values():
                w.close()
        return {"rows": rows}

    doc = restore_io.publish_table(final, schema, fill)
    logger().info("restore: decoded %d latent rows to %s", doc["rows"], final)
    return RestoreOutput(rows=doc["rows"], created=True, **out)


decode_latents_task = task(decode_latents, name="restore-from-latents", cache_policy=NO_CACHE)
