"""Fan-out: where per-shard tasks run, and the sharded ingest/export that submit them.

Runners (`make_task_runner`):

    threads   ThreadPoolTaskRunner(max_workers)       in this process; TF is imported once
    dask      DaskTaskRunner(address="tcp://host:8786")   an existing Dask cluster (dask scheduler)
              DaskTaskRunner(LocalCluster(processes=False))  no address: a local Dask cluster whose
              workers are threads of this process (a process-based cluster would re-import
              TensorFlow in each worker, about 35 s each on a small machine)

Sharded work (call inside a flow; `fanout_flow` builds one with a chosen runner):

- `ingest_shards(shards, name)`: one Prefect task per input shard reads, validates and stages it
  (`<root>/datasets/<name>/.shards-*/`); the flow then checks the shards agree (shape, storage
  dtype, scale), re-codes string labels over all shards, rejects ids repeated across shards, and
  writes ONE dataset version exactly as `ingest` would for the concatenated input;
- `export_shards(model_uri, dataset)`: one task per (split, dataset part file) encodes that part
  into `part-<split>-<NNNNN>.parquet` of a hidden staging folder, published atomically like
  `export_latents`. Batches are the same as `export_latents`' (same files, same batch size), so
  the table's values are identical to it.

Tasks only exchange paths, names and small dicts, so the results do not depend on the runner. What
a Dask worker needs is the data root, the saved model folder and the Prefect API to be reachable
from it (an object-store URI and shared paths on a real cluster; any local path on one machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from models import constants as C
from models.errors import ConfigError, DatasetError
from tasks import datasets, storage

RunnerKind = Literal["threads", "dask"]
RUNNER_KINDS: tuple[str, ...] = ("threads", "dask")
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+(:\d+)?/?$|^[A-Za-z0-9.\-]+:\d+$")


def check_runner(kind: str, address: str | None = None, workers: int | None = None) -> None:
    """Validate the runner settings up front (the config loader calls this too)."""
    if kind not in RUNNER_KINDS:
        raise ConfigError(
            f"pipeline.task_runner={kind!r} is not allowed; choose one of {', '.join(RUNNER_KINDS)}"
        )
    if address and not _ADDRESS.match(address):
        raise ConfigError(
            f"pipeline.dask_address={address!r} is not a Dask scheduler address; expected e.g. "
            "tcp://10.0.0.5:8786 (or leave it empty for a local cluster)"
        )
    if address and kind != "dask":
        raise ConfigError(
            f"pipeline.dask_address={address!r} needs pipeline.task_runner='dask' (it is {kind!r})"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise ConfigError(f"pipeline.workers={workers!r} must be an integer >= 1")
    if workers is not None and workers < 1:
        raise ConfigError(f"pipeline.workers={workers!r} must be an integer >= 1")


def make_task_runner(
    kind: str = "threads", address: str | None = None, workers: int | None = None
) -> TaskRunner:
    """A fresh task runner of ``kind``; ``workers`` = threads (threads) or local Dask threads."""
    check_runner(kind, address, workers)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    cluster_kwargs: dict[str, Any] = {
        "processes": False,
        "n_workers": 1,
        "threads_per_worker": workers or 2,
        "dashboard_address": None,  # no HTTP server nobody asked for
    }
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)


def describe_runner(runner: TaskRunner) -> str:
    """One line for logs and summaries: which runner, and where."""
    address = getattr(runner, "address", None) or getattr(runner, "_address", None)
    if type(runner).__name__ == "DaskTaskRunner":
        return f"dask ({address})" if address else "dask (local cluster, in-process threads)"
    return f"threads (max_workers={getattr(runner, '_max_workers', None) or 'default'})"


def fanout_flow(
    fn: Callable,
    name: str,
    kind: str = "threads",
    address: str | None = None,
    workers: int | None = None,
) -> Callable:
    """``fn`` as a Prefect flow named ``name`` whose tasks run on a fresh runner of ``kind``."""
    from prefect import flow

    return flow(fn, name=name, task_runner=make_task_runner(kind, address, workers))


# ----------------------------------------------------------------------------- sharded ingest
_FIXED = "fixed_split"


def read_shard(shard: str, staged: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Task body: read + validate one shard with the ingest readers, stage it as Parquet at
    ``staged``; returns what the flow needs to combine the shards (no arrays)."""
    from tasks.sources import load_source

    data = load_source(shard, **(options or {}))
    n = len(data.ids)
    flat = np.ascontiguousarray(data.x.reshape(n, -1))
    x = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    labels = None if data.labels is None else np.ma.asarray(data.labels)
    columns = {
        C.COL_ID: pa.array([str(i) for i in data.ids], pa.string()),
        C.COL_X: x,
        C.COL_LABEL: pa.nulls(n, pa.int64()) if labels is None
        else pa.array(labels.filled(0), pa.int64(), mask=np.ma.getmaskarray(labels)),
        _FIXED: pa.nulls(n, pa.string()) if data.fixed_split is None
        else pa.array([str(v) for v in data.fixed_split], pa.string()),
    }  # fmt: skip
    fs, path = storage.filesystem(staged)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(pa.table(columns), tmp, filesystem=fs)
    fs.move(tmp, path)
    return {
        "shard": shard, "staged": staged, "rows": n, "sha256": data.sha256, "kind": data.kind,
        "feature_shape": list(data.feature_shape), "storage_dtype": data.x.dtype.name,
        "scale": data.scale, "label_names": list(data.label_names), "has_labels": labels is not None,
        "named_labels": bool(data.label_names),
    }  # fmt: skip


read_shard_task = task(read_shard, name="ingest-shard", cache_policy=NO_CACHE)


def ingest_shards(
    shards: list[str],
    name: str,
    data_root: str | None = None,
    split_seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    options: dict[str, Any] | None = None,
    prefix_ids: bool = False,
    wrap: Callable[[Task], Task] | None = None,
) -> datasets.IngestResult:
    """Ingest the files ``shards`` (in this order) as ONE dataset ``name``; call inside a flow.

    Each shard is read on the flow's task runner. ``options`` are the reader options of `ingest`
    (e.g. id_column, label_column, storage_dtype, scale) and apply to every shard.
    ``prefix_ids`` turns each id into `<shard file name>/<id>` (shards whose rows are numbered
    0..n-1 each would otherwise collide). ``wrap`` is applied to the per-shard task, e.g. the
    flows' retry policy `flows.stages.with_io_retries`.
    """
    from tasks.ingest import write_source

    name = datasets.validate_name(name)
    if not shards:
        raise DatasetError("ingest_shards got no shards; pass at least one file")
    root = datasets.resolve_data_root(data_root)
    stage = storage.join(root, "datasets", name, f".shards-{uuid.uuid4().hex[:12]}")
    fs, stage_path = storage.filesystem(stage)
    fs.create_dir(stage_path, recursive=True)
    try:
        shard_task = wrap(read_shard_task) if wrap else read_shard_task
        futures = [
            shard_task.submit(s, storage.join(stage, f"shard-{i:05d}.parquet"), options)
            for i, s in enumerate(shards)
        ]
        wait(futures)
        parts = [f.result() for f in futures]
        data = _combine(parts, prefix_ids, options or {})
        return write_source(
            data, name, root, split_seed=split_seed, valid_fraction=valid_fraction,
            test_fraction=test_fraction,
        )  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            fs.delete_dir(stage_path)


def _combine(parts: list[dict[str, Any]], prefix_ids: bool, options: dict[str, Any]):
    """The staged shards as one `SourceData`, as if the shards were one concatenated input."""
    from tasks.sources import SourceData

    first = parts[0]
    for p in parts[1:]:
        for key in ("feature_shape", "storage_dtype", "scale", "has_labels", "named_labels"):
            if p[key] != first[key]:
                raise DatasetError(
                    f"shard {p['shard']!r} has {key}={p[key]!r} but {first['shard']!r} has "
                    f"{first[key]!r}; shards of one dataset must agree (pass storage_dtype= and "
                    "scale= explicitly, and the same label column, to every shard)"
                )
    names = sorted({n for p in parts for n in p["label_names"]})
    code = {n: i for i, n in enumerate(names)}
    ids, xs, labels, masks, fixed = [], [], [], [], []
    owner: dict[str, str] = {}
    for p in parts:
        fs, path = storage.filesystem(p["staged"])
        table = pq.read_table(path, filesystem=fs)
        shard_ids = [str(i) for i in table.column(C.COL_ID).to_pylist()]
        if prefix_ids:
            shard_ids = [f"{os.path.basename(p['shard'].rstrip('/'))}/{i}" for i in shard_ids]
        for i in shard_ids:
            if owner.setdefault(i, p["shard"]) != p["shard"]:
                raise DatasetError(
                    f"row id {i!r} of shard {p['shard']!r} also appears in shard {owner[i]!r}; "
                    "ids must be unique across shards (use an id column, or prefix_ids=True)"
                )
        ids += shard_ids
        xs.append(table.column(C.COL_X).combine_chunks().flatten().to_numpy(zero_copy_only=False))
        lab = table.column(C.COL_LABEL)
        values = lab.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        if p["label_names"]:  # per-shard codes -> codes over the union of names (sorted)
            values = np.asarray([code[n] for n in p["label_names"]], np.int64)[values]
        labels.append(values)
        masks.append(np.asarray(lab.is_null()))
        fixed.append(table.column(_FIXED).to_pylist())
    n = len(ids)
    x = np.concatenate(xs).astype(first["storage_dtype"]).reshape(n, *first["feature_shape"])
    flat_fixed = [v for f in fixed for v in f]
    digest = hashlib.sha256("".join(p["sha256"] for p in parts).encode()).hexdigest()
    return SourceData(
        kind=f"shards:{first['kind']}", uri=",".join(p["shard"] for p in parts), sha256=digest,
        x=x, ids=np.asarray(ids, dtype=object), scale=float(first["scale"]),
        labels=np.ma.MaskedArray(np.concatenate(labels), mask=np.concatenate(masks))
        if first["has_labels"] else None,
        fixed_split=None if all(v is None for v in flat_fixed)
        else np.asarray([v or C.TRAIN for v in flat_fixed], dtype=object),
        label_names=tuple(names), options={**options, "shards": len(parts)},
    )  # fmt: skip


# ----------------------------------------------------------------------------- sharded export
_ENCODERS: dict[str, Callable] = {}
_ENCODERS_LOCK = threading.Lock()


def _encoder(saved_model_dir: str) -> Callable:
    """One compiled encoder per model folder and process (Dask workers reuse it across tasks)."""
    with _ENCODERS_LOCK:
        if saved_model_dir not in _ENCODERS:
            from tasks.export import make_encoder

            _ENCODERS[saved_model_dir] = make_encoder(saved_model_dir)[0]
        return _ENCODERS[saved_model_dir]


def encode_part(
    saved_model_dir: str, part: str, out: str, split: str, scale: float, input_dim: int,
    batch_size: int, latent_dim: int, provenance: str,
) -> int:  # fmt: skip
    """Task body: encode one dataset part file into one latent part file; returns its rows."""
    from tasks.export import METADATA_KEY, _table, latent_schema

    encode = _encoder(saved_model_dir)
    schema = latent_schema(latent_dim).with_metadata({METADATA_KEY: provenance.encode()})
    fs, path = storage.filesystem(out)
    rows = 0
    with datasets._open_parquet(part) as pf, pq.ParquetWriter(path, schema, filesystem=fs) as w:
        for rb in pf.iter_batches(batch_size=batch_size):  # the batches export_latents uses
            flat = rb.column(C.COL_X).flatten().to_numpy(zero_copy_only=False)
            x = datasets.to_model_space(flat.reshape(-1, input_dim), scale)
            z_mean, z_std = encode(x)
            ids, labels = rb.column(C.COL_ID), rb.column(C.COL_LABEL)
            w.write_table(_table(schema, ids, split, labels, z_mean, z_std, None))
            rows += len(x)
    return rows


encode_part_task = task(encode_part, name="export-part", cache_policy=NO_CACHE)


def export_shards(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: Sequence[str] = C.SPLITS,
    batch_size: int = 2000,
    wrap: Callable[[Task], Task] | None = None,
):
    """`export_latents` (without z samples) with one task per (split, part file); call in a flow.

    ``wrap`` is applied to the per-part task (e.g. `flows.stages.with_io_retries`).
    """
    from models.saved import read_config
    from tasks import export, tracking

    if batch_size <= 0:
        raise ConfigError(f"--batch-size={batch_size} must be > 0")
    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    resolved = tracking.resolve_model(model_uri)
    model_name = resolved.name or "unregistered"
    model_version = resolved.version if resolved.version is not None else (resolved.run_id or "0")
    final = export.latent_table_path(root, manifest.name, model_name, model_version)
    fs, final_path = storage.filesystem(final)
    key = {"dataset_version": manifest.version, "splits": list(splits), "samples": 0}
    key["sample_seed"] = None
    export._recover(fs, final_path)
    existing = storage.read_json(fs, posixpath.join(final_path, "manifest.json"))
    if existing and {k: existing.get(k, export.KEY_DEFAULTS.get(k)) for k in key} == key:
        return export.ExportOutput(
            final, int(existing["rows"]), model_uri, resolved.version, manifest.version, False
        )
    latent_dim = read_config(resolved.saved_model_dir)[0].latent_dim
    provenance = {
        "model_uri": model_uri, "model_name": model_name, "model_version": resolved.version,
        "run_id": resolved.run_id, "dataset": manifest.name, "latent_dim": latent_dim,
        "schema_version": export.SCHEMA_VERSION, **key,
    }  # fmt: skip
    parent, leaf = posixpath.split(final.rstrip("/"))
    tmp = storage.join(parent, f".{leaf}.tmp-{uuid.uuid4().hex[:8]}")
    tmp_path = storage.filesystem(tmp)[1]
    fs.create_dir(tmp_path, recursive=True)
    try:
        part_task = wrap(encode_part_task) if wrap else encode_part_task
        futures = [
            part_task.submit(
                resolved.saved_model_dir,
                part,
                storage.join(tmp, f"part-{split}-{i:05d}.parquet"),
                split,
                manifest.scale,
                manifest.input_dim,
                batch_size,
                latent_dim,
                json.dumps(provenance),
            )  # fmt: skip
            for split in splits
            for i, part in enumerate(
                datasets.split_files(root, manifest.name, manifest.version, split)
            )
        ]
        wait(futures)
        rows = sum(f.result() for f in futures)
        columns = export.latent_schema(latent_dim).names
        provenance.update(rows=rows, created_at=datetime.now(timezone.utc).isoformat(),
                          columns=columns, fanout_tasks=len(futures))  # fmt: skip
        storage.write_json(fs, posixpath.join(tmp_path, "manifest.json"), provenance)
        export.publish_dir(fs, tmp_path, final_path)
    finally:
        with contextlib.suppress(OSError):  # gone (renamed) or the previous table (exchanged)
            fs.delete_dir(tmp_path)
    return export.ExportOutput(final, rows, model_uri, resolved.version, manifest.version, True)


__all__ = [
    "RUNNER_KINDS", "RunnerKind", "check_runner", "describe_runner", "encode_part_task",
    "export_shards", "fanout_flow", "ingest_shards", "make_task_runner", "read_shard_task",
]  # fmt: skip
