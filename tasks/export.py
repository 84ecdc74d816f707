"""Export stage: posterior inference of z for every row -> a wide latent feature table.

    <root>/latents/<dataset>/<registered-name>/v<model-version>/part-<split>-<NNNNN>.parquet
    <root>/latents/<dataset>/<registered-name>/v<model-version>.manifest.json

One output part per dataset part file (`NNNNN` is the input part's index), written by
`encode_part`; `export_latents` runs that part loop inline, or submits one Prefect task per part
(``part_task``, e.g. on a Dask cluster) - the same function either way, so the tables are
byte-identical. Columns and codecs: tasks/store/tables.py; with ``samples=K > 0`` a `z_samples`
column holds K draws z ~ q(z|x) per row, seeded by (seed, split, part) so they do not depend on
the batch size or the runner. Publication is atomic (tasks/store/publish.py) and idempotent: the
same model version, dataset version, splits and samples again is a no-op. Memory: one batch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from models import constants as C
from models.errors import ConfigError
from tasks import tracking
from tasks.logs import ProgressLogger, logger
from tasks.store import datasets, fs, publish, readers, tables

# What decides a table's content besides the model version.
KEY_FIELDS = ("dataset_version", "splits", "samples", "sample_seed")

_ENCODERS: dict[str, Callable] = {}
_ENCODERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ExportOutput:
    path: str
    rows: int
    model_uri: str
    model_version: int | None
    dataset_version: str
    created: bool


def make_encoder(saved_model_dir: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """x float32 [B, D] -> (z_mean, z_std) numpy: the saved VAE's encoder, compiled once per
    model folder and process (tasks on the same worker reuse it)."""
    with _ENCODERS_LOCK:
        if saved_model_dir not in _ENCODERS:
            import tensorflow as tf

            from models.saved import load_vae

            vae = load_vae(saved_model_dir)
            fn = tf.function(vae.posterior_params, jit_compile=True, reduce_retracing=True)

            def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                mean, std = fn(tf.constant(x, tf.float32))
                return mean.numpy(), std.numpy()

            _ENCODERS[saved_model_dir] = encode
        return _ENCODERS[saved_model_dir]


def encode_part(
    saved_model_dir: str,
    part: str,
    out: str,
    split: str,
    manifest_json: str,
    provenance_json: str,
    batch_size: int,
    seed: list[int],
) -> int:
    """Task body: encode one dataset part file into one latent part file; returns its rows.

    ``seed`` = [seed, split index, part index] keys the z samples of this part.
    """
    manifest = datasets.DatasetManifest.from_json(manifest_json, part)
    provenance = json.loads(provenance_json)
    latent_dim, samples = provenance["latent_dim"], provenance["samples"]
    schema = tables.latent_schema(latent_dim, samples, provenance)
    encode = make_encoder(saved_model_dir)
    rng = np.random.default_rng(seed)
    rows = 0
    with fs.open_parquet(part) as pf, fs.parquet_writer(out, schema) as writer:
        label = f"export {manifest.name} {fs.basename(out).removesuffix('.parquet')}"
        progress = ProgressLogger(pf.metadata.num_rows, label, artifact=False)
        for rb in pf.iter_batches(batch_size=batch_size):
            x = tables.decode_x(rb.column(C.COL_X), manifest.storage_dtype, manifest.input_dim)
            z_mean, z_std = encode(readers.to_model_space(x, manifest.scale))
            z = None
            if samples:
                eps = rng.standard_normal((len(x), samples, latent_dim), np.float32)
                z = z_mean[:, None, :] + z_std[:, None, :] * eps
            ids, labels = rb.column(C.COL_ID), rb.column(C.COL_LABEL)
            writer.write_table(tables.latent_batch(schema, ids, split, labels, z_mean, z_std, z))
            rows += len(x)
            progress(rows)
            publish.fault_point("export_mid_write")
    return rows


encode_part_task = task(encode_part, name="export-part", cache_policy=NO_CACHE)


def check_export_args(splits: tuple[str, ...], batch_size: int, samples: int) -> None:
    for split in splits:
        readers.check_split(split)
    if not splits:
        raise ConfigError("splits is empty; export at least one of train, valid, test")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer > 0")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"samples={samples!r} must be an integer >= 0")


def _part_calls(
    root: str,
    manifest: datasets.DatasetManifest,
    splits: tuple[str, ...],
    saved_model_dir: str,
    provenance: dict[str, Any],
    batch_size: int,
    seed: int,
) -> list[tuple[str, dict[str, Any]]]:
    """(output file name, `encode_part` arguments) for every (split, dataset part file)."""
    calls = []
    for s_index, split in enumerate(splits):
        files = readers.split_files(root, manifest.name, manifest.version, split)
        for p_index, part in enumerate(files):
            args = dict(
                saved_model_dir=saved_model_dir, part=part, split=split,
                manifest_json=manifest.to_json(), provenance_json=json.dumps(provenance),
                batch_size=batch_size, seed=[seed, s_index, p_index],
            )  # fmt: skip
            calls.append((f"part-{split}-{p_index:05d}.parquet", args))
    return calls


def export_latents(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = C.SPLITS,
    batch_size: int = 2000,
    samples: int = 0,
    seed: int = 0,
    part_task: Task | None = None,
) -> ExportOutput:
    """Encode every row of ``splits`` with the registry model and publish the latent table.

    ``part_task``: a Prefect task of `encode_part` to submit once per part (call inside a flow);
    None runs the parts inline.
    """
    splits = tuple(splits)
    check_export_args(splits, batch_size, samples)
    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    resolved = tracking.resolve_model(model_uri)
    model_name = resolved.name or "unregistered"
    model_version = resolved.version if resolved.version is not None else (resolved.run_id or "0")
    final = tables.latent_table_path(root, manifest.name, model_name, model_version)
    key = {
        "dataset_version": manifest.version,
        "splits": list(splits),
        "samples": samples,
        "sample_seed": seed if samples else None,
    }
    publish.sweep(final)  # a stranded previous table back; stages of killed exports gone
    existing = tables.read_manifest(final)
    if existing and {k: existing.get(k) for k in KEY_FIELDS} == key:
        logger().info("export: %s already holds this model and dataset version", final)
        rows = int(existing["rows"])
        return ExportOutput(final, rows, model_uri, resolved.version, manifest.version, False)

    from models.saved import read_config

    provenance = {
        "model_uri": model_uri,
        "model_name": model_name,
        "model_version": resolved.version,
        "run_id": resolved.run_id,
        "dataset": manifest.name,
        "latent_dim": read_config(resolved.saved_model_dir)[0].latent_dim,
        "schema_version": tables.SCHEMA_VERSION,
        **key,
    }
    calls = _part_calls(
        root, manifest, splits, resolved.saved_model_dir, provenance, batch_size, seed
    )

    def fill(stage: str) -> dict[str, Any]:
        if part_task is None:
            counts = [encode_part(out=fs.join(stage, name), **c) for name, c in calls]
        else:
            futures = [part_task.submit(out=fs.join(stage, name), **c) for name, c in calls]
            wait(futures)
            counts = [f.result() for f in futures]
        columns = tables.latent_schema(provenance["latent_dim"], samples).names
        return {**provenance, "rows": sum(counts), "columns": columns}

    start = time.perf_counter()
    doc = tables.publish_table(final, fill)
    seconds = time.perf_counter() - start
    logger().info(
        "export: wrote %d rows to %s in %.1f s (%.0f rows/s)",
        doc["rows"],
        final,
        seconds,
        doc["rows"] / max(seconds, 1e-9),
    )
    return ExportOutput(final, doc["rows"], model_uri, resolved.version, manifest.version, True)


export_task = task(export_latents, name="export", cache_policy=NO_CACHE)
