"""Ingest stage: read one source (or several shard files as one dataset), split it by seed, and
write a versioned Parquet dataset (tasks/store/writer.py).

`ingest` is the plain function; `ingest_task` its Prefect task, whose cache key is the source
*content* (plus name, data root and split settings), so re-ingesting identical data is a cache
hit; the function is idempotent too (same content -> same version, nothing written).

Several sources (shards) are read one by one, checked to agree (feature shape, storage dtype,
scale, labels), their string labels re-coded over all shards, ids checked unique across shards,
and written as ONE version, exactly as if they were one concatenated input. The shard reads run
inline, or as one Prefect task per shard (``shard_task``, e.g. on a Dask cluster), each staging
its shard as Parquet in a hidden folder that the combine step reads back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from models.constants import COL_ID, COL_LABEL, COL_X, SPLITS, TEST, TRAIN
from models.errors import ConfigError, DatasetError
from tasks.sources import SourceData, content_sha256, load_source
from tasks.splits import assign_splits, check_fractions, check_split_sizes
from tasks.store import datasets, fs, publish, tables
from tasks.store.writer import ContentHasher, DatasetWriter, IngestResult, as_labels, check_chunk

_FIXED = "fixed_split"
EVENT_PUBLISHED = "aevb.dataset.published"  # Prefect event of a new version (flows/serve.py)


def default_name(source: str) -> str:
    """Built-in name, or the file/folder name made into a valid dataset name."""
    stem = re.split(r"[\\/]", source.rstrip("/\\"))[-1].lower()
    for ext in (".gz", ".csv", ".npz", ".parquet", ".pq"):
        stem = stem.removesuffix(ext)
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:64]
    return datasets.validate_name(stem or "dataset")


KEEP_GATHERED_BYTES = 256 << 20


def _chunks(data: SourceData, rows: np.ndarray, size: int):
    x = data.x.reshape(len(data.x), -1)
    for start in range(0, len(rows), size):
        idx = rows[start : start + size]
        labels = None if data.labels is None else data.labels[idx]
        yield data.ids[idx], x[idx], labels


def write_source(
    data: SourceData,
    name: str,
    data_root: str | None,
    *,
    split_seed: int,
    valid_fraction: float,
    test_fraction: float,
    cache_key: str = "",
) -> IngestResult:
    """Split ``data`` and write it; a no-op (nothing written) if that content is already stored."""
    root = datasets.resolve_data_root(data_root)
    n_fixed = None if data.fixed_split is None else int((data.fixed_split == TEST).sum())
    check_split_sizes(data.uri, len(data.x), n_fixed, valid_fraction, test_fraction)
    splits = assign_splits(len(data.x), data.fixed_split, split_seed, valid_fraction, test_fraction)
    source = {**data.source_record(), "cache_key": cache_key}
    spec = dict(
        feature_shape=data.feature_shape,
        storage_dtype=data.x.dtype.name,
        scale=data.scale,
        split_seed=split_seed,
        source=source,
        label_names=data.label_names,
    )
    probe = DatasetWriter(root, name, **spec)  # nothing is written until rows arrive
    hasher = ContentHasher()
    # The hash pass gathers each split's rows in stored order; small sources keep those chunks
    # for the write pass instead of gathering again (one extra copy of x, at most this many bytes).
    keep = data.x.nbytes <= KEEP_GATHERED_BYTES
    gathered: dict[str, list] = {split: [] for split in SPLITS}
    for split in SPLITS:
        for ids, x, labels in _chunks(data, splits[split], probe.rows_per_file):
            ids = tables.ids_array(ids)  # converted once: hashed here, stored by the writer
            x = check_chunk(split, ids, x, probe.dim, probe.dtype)
            hasher.update(split, ids, x, as_labels(labels, len(ids)))
            if keep:
                gathered[split].append((ids, x, labels))
    version = hasher.version(probe.meta())
    path = datasets.version_dir(root, name, version)
    if datasets.is_complete(root, name, version):
        datasets.set_current(root, name, version)  # writes nothing when it is current already
        publish.sweep_all(datasets.dataset_dir(root, name))  # stages of killed ingests
        return IngestResult(name, version, path, created=False)
    with DatasetWriter(root, name, **spec, version=version) as writer:
        for split in SPLITS:
            chunks = gathered[split] if keep else _chunks(data, splits[split], writer.rows_per_file)
            for ids, x, labels in chunks:
                writer.write(split, ids, x, labels)
        return writer.commit()


def ingest(
    source: str | Sequence[str],
    name: str | None = None,
    data_root: str | None = None,
    *,
    split_seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    prefix_ids: bool = False,
    shard_task: Task | None = None,
    **source_options: Any,
) -> IngestResult:
    """Ingest ``source`` (a built-in name, file or folder; or a list of shard files, which then
    need ``name``) as dataset ``name`` under ``data_root``.

    ``prefix_ids`` turns each shard's ids into `<shard file name>/<id>` (shards numbered 0..n-1
    each would otherwise collide); ``shard_task``: a Prefect task of `stage_shard` to submit once
    per shard (call inside a flow). ``source_options`` are the reader options (tasks/sources).
    """
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise DatasetError("no source given; pass a built-in name, a file or a folder")
    if name is None and len(sources) > 1:
        raise ConfigError("several shards need a dataset name (name=...)")
    name = datasets.validate_name(name) if name is not None else default_name(sources[0])
    check_fractions(valid_fraction, test_fraction)
    root = datasets.resolve_data_root(data_root)
    options = {k: v for k, v in source_options.items() if v is not None}
    key = ingest_fingerprint(
        sources, name, root, split_seed, valid_fraction, test_fraction, options
    )
    if len(sources) == 1:
        data = load_source(sources[0], **options)
    else:
        data = combine(_read_shards(sources, name, root, options, shard_task), prefix_ids, options)
    result = write_source(
        data,
        name,
        root,
        split_seed=split_seed,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        cache_key=key,
    )
    if result.created:
        emit_published(root, result)
    return result


def published_event(root: str, result: IngestResult) -> dict[str, Any]:
    """The `aevb.dataset.published` event of ``result`` as emit_event's keyword arguments. Its
    id is derived from (data root, name, version): however often a version is announced, the
    server's triggers see one event (they drop ids they have seen)."""
    where = f"{root}|{result.name}|{result.version}"
    return dict(
        event=EVENT_PUBLISHED,
        resource={
            "prefect.resource.id": f"aevb.dataset.{result.name}",
            "prefect.resource.name": result.name,
            "aevb.dataset.name": result.name,
            "aevb.dataset.version": result.version,
            "aevb.data_root": root,
        },
        payload={"path": result.path},
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"aevb:{EVENT_PUBLISHED}:{where}"),
    )


def emit_published(root: str, result: IngestResult) -> None:
    """Announce a new version to the Prefect server of PREFECT_API_URL (what `aevb serve
    --on-new-data` triggers on); nothing without one (the temporary server has no listener)."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        emit_event(**published_event(root, result))


def ingest_fingerprint(
    sources: Sequence[str],
    name: str,
    root: str,
    split_seed: int,
    valid: float,
    test: float,
    options: dict,
) -> str:
    """Hash of the sources' content and everything else that decides the written dataset."""
    doc = {
        "content": [content_sha256(s, options) for s in sources],
        "source": list(sources),
        "name": name,
        "root": root,
        "split_seed": split_seed,
        "valid": valid,
        "test": test,
        "options": {k: repr(v) for k, v in sorted(options.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- shards


def stage_shard(shard: str, staged: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Task body: read + validate one shard and stage it as one Parquet file at ``staged``;
    returns what `load_staged` needs (no arrays cross the task boundary)."""
    data = load_source(shard, **(options or {}))
    n = len(data.ids)
    flat = np.ascontiguousarray(data.x.reshape(n, -1))
    labels = data.labels
    columns = {
        COL_ID: tables.ids_array(data.ids),
        COL_X: tables.encode_x(flat, tables.x_type(flat.dtype.name, flat.shape[1])),
        COL_LABEL: pa.nulls(n, pa.int64())
        if labels is None
        else pa.array(labels.filled(0), pa.int64(), mask=np.ma.getmaskarray(labels)),
        _FIXED: pa.nulls(n, pa.string())
        if data.fixed_split is None
        else pa.array([str(v) for v in data.fixed_split], pa.string()),
    }
    fs.write_parquet(pa.table(columns), staged)
    return {
        "shard": shard,
        "staged": staged,
        "sha256": data.sha256,
        "kind": data.kind,
        "feature_shape": list(data.feature_shape),
        "scale": data.scale,
        "label_names": list(data.label_names),
        "has_labels": labels is not None,
    }


def load_staged(summary: dict[str, Any]) -> SourceData:
    """A shard staged by `stage_shard`, back in memory."""
    table = fs.read_parquet(summary["staged"])
    shape = tuple(summary["feature_shape"])
    dim = int(np.prod(shape))
    dtype = tables.x_dtype(table.schema.field(COL_X), dim)
    x = tables.decode_x(table.column(COL_X), dtype, dim).reshape(-1, *shape)
    lab = table.column(COL_LABEL)
    labels = None
    if summary["has_labels"]:
        values = lab.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        labels = np.ma.MaskedArray(values, mask=np.asarray(lab.is_null()))
    fixed = table.column(_FIXED).to_pylist()
    return SourceData(
        kind=summary["kind"],
        uri=summary["shard"],
        sha256=summary["sha256"],
        x=x,
        ids=np.asarray(table.column(COL_ID).to_pylist(), dtype=object),
        scale=summary["scale"],
        labels=labels,
        label_names=tuple(summary["label_names"]),
        fixed_split=None if all(v is None for v in fixed) else np.asarray(fixed, dtype=object),
    )


def _read_shards(
    shards: list[str], name: str, root: str, options: dict, shard_task: Task | None
) -> list[SourceData]:
    if shard_task is None:
        return [load_source(s, **options) for s in shards]
    with publish.Stage(fs.join(datasets.dataset_dir(root, name), "shards")) as stage:
        futures = [
            shard_task.submit(s, fs.join(stage.uri, f"shard-{i:05d}.parquet"), options)
            for i, s in enumerate(shards)
        ]
        wait(futures)
        return [load_staged(f.result()) for f in futures]


def combine(parts: list[SourceData], prefix_ids: bool, options: dict[str, Any]) -> SourceData:
    """The shards as one `SourceData`, as if they were one concatenated input."""
    first = parts[0]
    for p in parts[1:]:
        for what, get in _AGREE.items():
            if get(p) != get(first):
                raise DatasetError(
                    f"shard {p.uri!r} has {what}={get(p)!r} but {first.uri!r} has {get(first)!r}; "
                    "shards of one dataset must agree (pass storage_dtype= and scale= explicitly, "
                    "and the same label column, to every shard)"
                )
    names = sorted({n for p in parts for n in p.label_names})
    code = {n: i for i, n in enumerate(names)}
    ids: list[str] = []
    owner: dict[str, str] = {}
    for p in parts:
        shard_ids = [str(i) for i in p.ids]
        if prefix_ids:
            shard_ids = [f"{os.path.basename(p.uri.rstrip('/'))}/{i}" for i in shard_ids]
        for i in shard_ids:
            if owner.setdefault(i, p.uri) != p.uri:
                raise DatasetError(
                    f"row id {i!r} of shard {p.uri!r} also appears in shard {owner[i]!r}; ids "
                    "must be unique across shards (use an id column, or data.prefix_shard_ids)"
                )
        ids += shard_ids
    labels = None
    if first.labels is not None:  # per-shard codes -> codes over the union of names (sorted)
        recoded = [
            np.ma.MaskedArray(
                np.asarray([code[n] for n in p.label_names], np.int64)[p.labels.filled(0)],
                mask=np.ma.getmaskarray(p.labels),
            )
            if p.label_names
            else p.labels
            for p in parts
        ]
        labels = np.ma.concatenate(recoded)
    fixed = [p.fixed_split if p.fixed_split is not None else [None] * len(p.ids) for p in parts]
    flat_fixed = [v for f in fixed for v in f]
    return SourceData(
        kind=f"shards:{first.kind}",
        uri=",".join(p.uri for p in parts),
        sha256=hashlib.sha256("".join(p.sha256 for p in parts).encode()).hexdigest(),
        x=np.concatenate([p.x for p in parts]),
        ids=np.asarray(ids, dtype=object),
        scale=float(first.scale),
        labels=labels,
        label_names=tuple(names),
        fixed_split=None
        if all(v is None for v in flat_fixed)
        else np.asarray([v or TRAIN for v in flat_fixed], dtype=object),
        options={**options, "shards": len(parts)},
    )


_AGREE = {
    "feature_shape": lambda p: p.feature_shape,
    "storage_dtype": lambda p: p.x.dtype.name,
    "scale": lambda p: float(p.scale),
    "labels": lambda p: p.labels is not None,
    "named labels": lambda p: bool(p.label_names),
}


# ----------------------------------------------------------------------------- Prefect


def ingest_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect cache key: a hit only when its record is still true on disk.

    The key is the content fingerprint when CURRENT already holds exactly this ingest (a re-ingest:
    cache hit), or when nothing exists and no record does either (first ingest: the record is then
    written under it). Otherwise (another version is current, or the dataset was deleted after an
    earlier run) a fresh key forces the task to run so CURRENT ends up right.
    """
    params = dict(parameters)
    options = {k: v for k, v in (params.pop("source_options", None) or {}).items() if v is not None}
    source = params["source"]
    sources = [source] if isinstance(source, str) else list(source)
    try:
        name = params.get("name") or default_name(sources[0])
        root = datasets.resolve_data_root(params.get("data_root"))
        key = ingest_fingerprint(
            sources,
            datasets.validate_name(name),
            root,
            params.get("split_seed", 0),
            params.get("valid_fraction", 0.1),
            params.get("test_fraction", 0.1),
            options,
        )
        current = datasets.current_version(root, name)
        recorded = current and datasets.load_manifest(root, name, current).source.get("cache_key")
    except (DatasetError, IndexError):
        return None  # let the task run and report the error itself
    if current is not None:
        return f"aevb-ingest-{key}" if recorded == key else f"aevb-ingest-{key}-{uuid.uuid4().hex}"
    store = getattr(context, "result_store", None)
    if store is not None and store.exists(f"aevb-ingest-{key}"):
        return f"aevb-ingest-{key}-{uuid.uuid4().hex}"
    return f"aevb-ingest-{key}"


ingest_task = task(
    ingest,
    name="ingest",
    cache_key_fn=ingest_cache_key,
    persist_result=True,
    result_serializer="json",  # no pickle in what we write (docs/design.md "Security")
)
stage_shard_task = task(stage_shard, name="ingest-shard", cache_policy=NO_CACHE)
