"""Export stage: posterior inference of z for every row -> a wide latent feature table.

    <root>/latents/<dataset>/<registered-name>/v<model-version>/part-<split>-00000.parquet
    <root>/latents/<dataset>/<registered-name>/v<model-version>/manifest.json

Columns `id`, `split`, `label`, `z_mean_0..k-1`, `z_std_0..k-1` (float32), so SQL engines and
dataframes use them directly; with ``samples=K > 0`` one more column `z_samples` holds K draws
z ~ q(z|x) per row as a fixed-size list of K fixed-size lists of k float32 (row-major [K, k]).
Provenance (model URI and version, run id, dataset version) sits in the manifest and in each file's
Parquet key-value metadata.

Atomic: the table is written into a hidden sibling folder (`.v<N>.tmp-*`) and swapped into place
with one `renameat2(RENAME_EXCHANGE)` on Linux, so readers and a killed export see the previous
table or the new one, never neither or a mix (elsewhere: rename-aside, and a later export puts a
stranded previous table back). Idempotent: exporting the same model version, dataset version,
splits and samples again is a no-op. Memory is bounded by one batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import posixpath
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.errors import ConfigError
from tasks import datasets, storage, tracking
from tasks.logs import logger

SCHEMA_VERSION = 1
METADATA_KEY = b"aevb.provenance"
SAMPLES_COLUMN = "z_samples"
STALE_SECONDS = 6 * 3600
# What decides a table's content besides the model version (defaults: tables written before
# samples existed).
KEY_DEFAULTS = {"samples": 0, "sample_seed": None}


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


def latent_schema(latent_dim: int, samples: int = 0) -> pa.Schema:
    fields = [
        pa.field(C.COL_ID, pa.string(), nullable=False),
        pa.field(C.COL_SPLIT, pa.string(), nullable=False),
        pa.field(C.COL_LABEL, pa.int64()),
    ]
    for prefix in (C.Z_MEAN_PREFIX, C.Z_STD_PREFIX):
        fields += [
            pa.field(f"{prefix}{i}", pa.float32(), nullable=False) for i in range(latent_dim)
        ]
    if samples:
        inner = pa.list_(pa.field("item", pa.float32(), nullable=False), latent_dim)
        fields.append(pa.field(SAMPLES_COLUMN, pa.list_(inner, samples), nullable=False))
    return pa.schema(fields)


def _fault_point(point: str) -> None:
    """Test hook: SIGKILL this process at a named point (env AEVB_TEST_KILL_AT=<point>)."""
    if os.environ.get("AEVB_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def make_encoder(saved_model_dir: str) -> tuple[Callable[[np.ndarray], tuple], int]:
    """(x float32 [B, D] -> (z_mean, z_std) numpy, latent_dim): the saved VAE's encoder, compiled."""
    import tensorflow as tf

    from models.saved import load_vae

    vae = load_vae(saved_model_dir)
    fn = tf.function(vae.posterior_params, jit_compile=True, reduce_retracing=True)

    def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = fn(tf.constant(x, tf.float32))
        return mean.numpy(), std.numpy()

    return encode, vae.config.latent_dim


def export_latents(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = C.SPLITS,
    batch_size: int = 2000,
    samples: int = 0,
    seed: int = 0,
) -> ExportOutput:
    """Encode every row of ``splits`` with the registry model and publish the latent table."""
    if samples < 0 or batch_size <= 0:
        raise ConfigError(f"--samples={samples} must be >= 0 and --batch-size={batch_size} > 0")
    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    resolved = tracking.resolve_model(model_uri)
    model_name = resolved.name or "unregistered"
    model_version = resolved.version if resolved.version is not None else (resolved.run_id or "0")
    final = latent_table_path(root, manifest.name, model_name, model_version)
    fs, final_path = storage.filesystem(final)
    key = {"dataset_version": manifest.version, "splits": list(splits), "samples": samples}
    key["sample_seed"] = seed if samples else None
    _recover(fs, final_path)
    existing = storage.read_json(fs, posixpath.join(final_path, "manifest.json"))
    if existing and {k: existing.get(k, KEY_DEFAULTS.get(k)) for k in key} == key:
        logger().info(
            "export: %s already holds this model and dataset version; nothing to do", final
        )
        return ExportOutput(
            final, int(existing["rows"]), model_uri, resolved.version, manifest.version, False
        )

    encode, latent_dim = make_encoder(resolved.saved_model_dir)
    provenance = {
        "model_uri": model_uri, "model_name": model_name, "model_version": resolved.version,
        "run_id": resolved.run_id, "dataset": manifest.name, "latent_dim": latent_dim,
        "schema_version": SCHEMA_VERSION, **key,
    }  # fmt: skip
    schema = latent_schema(latent_dim, samples).with_metadata(
        {METADATA_KEY: json.dumps(provenance).encode()}
    )
    parent, leaf = posixpath.split(final_path)
    tmp_path = posixpath.join(parent, f".{leaf}.tmp-{uuid.uuid4().hex[:8]}")
    fs.create_dir(tmp_path, recursive=True)
    try:
        rows = _write_parts(fs, tmp_path, schema, root, manifest, splits, batch_size, encode, seed)
        provenance.update(
            rows=rows, created_at=datetime.now(timezone.utc).isoformat(), columns=schema.names
        )
        storage.write_json(fs, posixpath.join(tmp_path, "manifest.json"), provenance)
        _fault_point("export_before_swap")
        publish_dir(fs, tmp_path, final_path)
    finally:
        with contextlib.suppress(OSError):
            fs.delete_dir(tmp_path)
    logger().info("export: wrote %d rows to %s", rows, final)
    return ExportOutput(final, rows, model_uri, resolved.version, manifest.version, created=True)


def _write_parts(fs, folder, schema, root, manifest, splits, batch_size, encode, seed) -> int:
    rows = 0
    samples = schema.field(SAMPLES_COLUMN).type.list_size if SAMPLES_COLUMN in schema.names else 0
    for s_index, split in enumerate(splits):
        rng = np.random.default_rng([seed, s_index])  # draws do not depend on batch_size
        path = posixpath.join(folder, f"part-{split}-00000.parquet")
        with pq.ParquetWriter(path, schema, filesystem=fs) as writer:
            for ids, labels, x in _batches(root, manifest, split, batch_size):
                z_mean, z_std = encode(x)
                eps = rng.standard_normal((len(x), samples, z_mean.shape[1]), np.float32)
                z = z_mean[:, None, :] + z_std[:, None, :] * eps if samples else None
                writer.write_table(_table(schema, ids, split, labels, z_mean, z_std, z))
                rows += len(x)
                _fault_point("export_mid_write")
    return rows


def _batches(
    root: str, manifest: datasets.DatasetManifest, split: str, batch_size: int
) -> Iterator[tuple[pa.Array, pa.Array, np.ndarray]]:
    """(ids, labels as Arrow arrays, x float32 [B, D] model space), streamed in stored order."""
    for path in datasets.split_files(root, manifest.name, manifest.version, split):
        with datasets._open_parquet(path) as pf:
            for rb in pf.iter_batches(batch_size=batch_size):
                x_col = rb.column(C.COL_X)
                flat = x_col.flatten().to_numpy(zero_copy_only=False)
                x = datasets.to_model_space(flat.reshape(-1, manifest.input_dim), manifest.scale)
                yield rb.column(C.COL_ID), rb.column(C.COL_LABEL), x


def _table(schema, ids, split, labels, z_mean, z_std, z_samples) -> pa.Table:
    n, k = z_mean.shape
    cols = [ids.cast(pa.string()), pa.array([split] * n, pa.string()), labels.cast(pa.int64())]
    cols += [pa.array(np.ascontiguousarray(z_mean[:, i], np.float32)) for i in range(k)]
    cols += [pa.array(np.ascontiguousarray(z_std[:, i], np.float32)) for i in range(k)]
    if z_samples is not None:
        kind = schema.field(SAMPLES_COLUMN).type
        flat = pa.array(np.ascontiguousarray(z_samples, np.float32).reshape(-1))
        inner = pa.FixedSizeListArray.from_arrays(flat, type=kind.value_type)
        cols.append(pa.FixedSizeListArray.from_arrays(inner, type=kind))
    return pa.Table.from_arrays(cols, schema=schema)


# ----------------------------------------------------------------------------- atomic publish

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the kernel/fs cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def publish_dir(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Make the complete folder ``src`` visible at ``dst``; an older ``dst`` is replaced such that
    a kill at any moment leaves either the old or the new folder at ``dst`` (local roots)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return _publish_remote(fs, src, dst)
    if not os.path.exists(dst):
        os.rename(src, dst)
        return
    if _exchange(src, dst):  # src now holds the old table; the caller removes it
        return
    parent, leaf = os.path.split(dst)
    aside = os.path.join(parent, f".{leaf}.old-{uuid.uuid4().hex[:8]}")
    os.rename(dst, aside)
    _fault_point("export_between_renames")
    os.rename(src, dst)
    shutil.rmtree(aside, ignore_errors=True)


def _recover(fs: pafs.FileSystem, final_path: str) -> None:
    """Put back a previous table stranded aside by a kill between the fallback's two renames;
    remove temporary folders of killed exports once they are stale."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return
    parent, leaf = os.path.split(final_path)
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if entry.startswith(f".{leaf}.old-") and not os.path.exists(final_path):
            os.rename(path, final_path)
        elif entry.startswith(f".{leaf}.") and time.time() - os.path.getmtime(path) > STALE_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def _publish_remote(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Object stores have no folder rename: drop the old manifest (the table's completeness
    marker), copy the parts, then write the manifest last."""
    with contextlib.suppress(OSError):
        fs.delete_file(posixpath.join(dst, "manifest.json"))
    if fs.get_file_info(dst).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(dst)
    fs.create_dir(dst, recursive=True)
    infos = fs.get_file_info(pafs.FileSelector(src, recursive=True))
    for info in sorted(infos, key=lambda i: i.path.endswith("manifest.json")):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, posixpath.join(dst, posixpath.relpath(info.path, src)))


export_task = task(export_latents, name="export", cache_policy=NO_CACHE)
