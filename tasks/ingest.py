"""The ingest stage: read a source, split it by seed, write a versioned Parquet dataset.

`ingest` is the plain, testable function; `ingest_task` is its Prefect task. The task's cache key
is the source *content* (plus name, data root and split options), so re-ingesting identical data is
a Prefect cache hit; the function itself is idempotent too (same content -> same version, nothing
written). CLI helpers at the bottom let the integrator wire `aevb ingest` and `aevb datasets`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import uuid
from typing import Any

import numpy as np

from models.constants import SPLITS, TEST, TRAIN, VALID
from models.errors import ConfigError, DatasetError
from tasks.datasets import (
    ContentHasher,
    DatasetWriter,
    IngestResult,
    as_labels,
    check_chunk,
    current_version,
    list_datasets,
    list_versions,
    load_manifest,
    resolve_data_root,
    set_current,
    validate_name,
    version_dir,
)
from tasks.sources import SourceData, content_sha256, load_source

__all__ = [
    "IngestResult",
    "add_datasets_arguments",
    "add_ingest_arguments",
    "datasets_command",
    "default_name",
    "describe_result",
    "format_datasets",
    "ingest",
    "ingest_from_args",
    "ingest_task",
    "run_ingest_task",
]


def default_name(source: str) -> str:
    """Built-in name, or the file/folder name made into a valid dataset name."""
    stem = re.split(r"[\\/]", source.rstrip("/\\"))[-1].lower()
    for ext in (".gz", ".csv", ".npz", ".parquet", ".pq"):
        stem = stem.removesuffix(ext)
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:64]
    return validate_name(stem or "dataset")


def assign_splits(
    n: int, fixed: np.ndarray | None, seed: int, valid_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Row indices per split, each in a seeded random order (that order is the stored order).

    Rows the source marks "test" (IDX t10k files) stay test; the rest are divided by the fractions.
    """
    for field, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{field}={value!r} must be in [0, 1)")
    if valid_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"valid_fraction + test_fraction = {valid_fraction + test_fraction:g} leaves no "
            "training rows; make their sum < 1"
        )
    perm = np.random.default_rng(seed).permutation(n)
    if fixed is None:
        n_test = round(n * test_fraction)
        test, pool = perm[:n_test], perm[n_test:]
        n_valid = round(n * valid_fraction)
    else:
        test, pool = perm[fixed[perm] == TEST], perm[fixed[perm] != TEST]
        n_valid = round(len(pool) * valid_fraction)
    return {TRAIN: pool[n_valid:], VALID: pool[:n_valid], TEST: test}


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
    root = resolve_data_root(data_root)
    splits = assign_splits(len(data.x), data.fixed_split, split_seed, valid_fraction, test_fraction)
    source = {**data.source_record(), "cache_key": cache_key}
    spec = dict(
        feature_shape=data.feature_shape, storage_dtype=data.x.dtype.name, scale=data.scale,
        split_seed=split_seed, source=source, label_names=data.label_names,
    )  # fmt: skip
    probe = DatasetWriter(root, name, **spec)  # nothing is written until rows arrive
    hasher = ContentHasher()
    for split in SPLITS:
        for ids, x, labels in _chunks(data, splits[split], probe.rows_per_file):
            x = check_chunk(split, ids, x, probe.dim, probe.dtype)
            hasher.update(split, ids, x, as_labels(labels, len(ids)))
    version = hasher.version(probe.meta())
    if version in list_versions(root, name):
        set_current(root, name, version)
        return IngestResult(name, version, version_dir(root, name, version), created=False)
    with DatasetWriter(root, name, **spec, version=version) as writer:
        for split in SPLITS:
            for ids, x, labels in _chunks(data, splits[split], writer.rows_per_file):
                writer.write(split, ids, x, labels)
        return writer.commit()


def ingest(
    source: str,
    name: str | None = None,
    data_root: str | None = None,
    *,
    split_seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    **source_options: Any,
) -> IngestResult:
    """Ingest ``source`` (built-in name, file or folder) as dataset ``name`` under ``data_root``."""
    name = validate_name(name) if name is not None else default_name(source)
    root = resolve_data_root(data_root)
    options = {k: v for k, v in source_options.items() if v is not None}
    key = ingest_fingerprint(source, name, root, split_seed, valid_fraction, test_fraction, options)
    data = load_source(source, **options)
    return write_source(
        data, name, root, split_seed=split_seed, valid_fraction=valid_fraction,
        test_fraction=test_fraction, cache_key=key,
    )  # fmt: skip


def ingest_fingerprint(
    source: str, name: str, root: str, split_seed: int, valid: float, test: float, options: dict
) -> str:
    """Hash of the source content and everything else that decides the written dataset."""
    doc = {
        "content": content_sha256(source, options), "source": source, "name": name, "root": root,
        "split_seed": split_seed, "valid": valid, "test": test,
        "options": {k: repr(v) for k, v in sorted(options.items())},
    }  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def ingest_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect cache key: a hit only when its record is still true on disk.

    The key is the content fingerprint when CURRENT already holds exactly this ingest (a re-ingest:
    cache hit), or when nothing exists and no record does either (first ingest: the record is then
    written under it). Otherwise (another version is current, or the dataset was deleted after an
    earlier run) a fresh key forces the task to run so CURRENT ends up right.
    """
    params = dict(parameters)
    options = {k: v for k, v in (params.pop("source_options", None) or {}).items() if v is not None}
    try:
        name = params.get("name") or default_name(params["source"])
        root = resolve_data_root(params.get("data_root"))
        key = ingest_fingerprint(
            params["source"], validate_name(name), root, params.get("split_seed", 0),
            params.get("valid_fraction", 0.1), params.get("test_fraction", 0.1), options,
        )  # fmt: skip
        current = current_version(root, name)
    except DatasetError:
        return None  # let the task run and report the error itself
    key = f"aevb-ingest-{key}"
    if current is not None:
        if load_manifest(root, name, current).source.get("cache_key") == key.removeprefix(
            "aevb-ingest-"
        ):
            return key
        return f"{key}-{uuid.uuid4().hex}"
    store = getattr(context, "result_store", None)
    if store is not None and store.exists(key):
        return f"{key}-{uuid.uuid4().hex}"
    return key


ingest_task: Any  # the Prefect task of `ingest`, created on first access (see __getattr__)


@functools.cache
def _make_ingest_task() -> Any:
    from prefect import task

    return task(
        ingest,
        name="ingest",
        cache_key_fn=ingest_cache_key,
        persist_result=True,
        result_serializer="json",  # no pickle in what we write (DESIGN.md "Security")
    )


def __getattr__(attr: str) -> Any:
    """``ingest_task`` is built on first access, so the plain function and `aevb datasets` do not
    pay Prefect's multi-second import; ``from tasks.ingest import ingest_task`` works as usual."""
    if attr == "ingest_task":
        return _make_ingest_task()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def run_ingest_task(
    source: str, name: str | None = None, data_root: str | None = None, **kwargs: Any
) -> IngestResult:
    """Call ``ingest_task`` inside a flow; a cache hit comes back with ``created=False``."""
    state = _make_ingest_task()(source, name, data_root, return_state=True, **kwargs)
    result: IngestResult = state.result()
    if state.name == "Cached" and result.created:
        result = IngestResult(result.name, result.version, result.path, created=False)
    return result


def describe_result(result: IngestResult) -> str:
    """One line for people: what was written, or that nothing was."""
    m = load_manifest(result.path.rsplit("/datasets/", 1)[0], result.name, result.version)
    rows = ", ".join(f"{s} {m.rows.get(s, 0)}" for s in SPLITS)
    if result.created:
        return f"ingested {result.name} version {result.version} ({rows}) at {result.path}"
    return (
        f"unchanged: {result.name} version {result.version} already holds identical content "
        f"({rows}); nothing written, CURRENT -> {result.version}"
    )


# ----------------------------------------------------------------------------- CLI support

# CLI flag -> source option (only set flags are passed on, so readers keep their defaults).
_SOURCE_FLAGS = (
    "format", "path", "scale", "storage_dtype", "id_column", "label_column", "x_column",
    "feature_columns", "labels_file", "color", "labels_from_folders",
)  # fmt: skip


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `aevb ingest SOURCE --name NAME [...]`."""
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="digits | mnist-5k | fashion-mnist | a file or folder (IDX, CSV, NPZ, images, Parquet)",
    )
    parser.add_argument(
        "--name", help="dataset name, [a-z0-9][a-z0-9._-]{0,63} (default: from SOURCE)"
    )
    parser.add_argument(
        "--data-root",
        help="local folder or fsspec URI such as s3://bucket/prefix (default: $AEVB_DATA_ROOT or ./data)",
    )
    parser.add_argument(
        "--format", choices=("idx", "csv", "npz", "images", "parquet"), help="skip format detection"
    )
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the train/valid/test split (default 0)"
    )
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="share of rows for validation (default 0.1)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of rows for test; IDX t10k files are the test split regardless (default 0.1)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        help="model input = stored value * SCALE (default: 1/255 for whole numbers 0..255, else 1)",
    )
    parser.add_argument(
        "--storage-dtype",
        choices=("auto", "uint8", "float32"),
        help="on-disk dtype of x (default auto)",
    )
    parser.add_argument(
        "--id-column", help="CSV/Parquet: column holding unique row ids (default: row numbers)"
    )
    parser.add_argument(
        "--label-column",
        help="CSV/Parquet: column holding labels (ints, or strings mapped to ints)",
    )
    parser.add_argument("--x-column", help="Parquet: list column holding the features")
    parser.add_argument(
        "--feature-columns",
        type=lambda s: s.split(","),
        help="CSV/Parquet: comma-separated feature columns (default: all other numeric columns)",
    )
    parser.add_argument("--labels-file", help="IDX: labels file for a single images file")
    parser.add_argument(
        "--path",
        help="fashion-mnist: folder holding its IDX files (default /usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "grayscale", "rgb"),
        help="images: pixel mode (default auto: rgb if any image is colour)",
    )
    parser.add_argument(
        "--labels-from-folders",
        action="store_true",
        default=None,
        help="images: use each image's sub-folder name as its label",
    )


def ingest_from_args(args: argparse.Namespace, runner: Any = None) -> IngestResult:
    """Run ``runner`` (default: the plain ``ingest``; pass a flow to orchestrate) from parsed args."""
    options = {k: getattr(args, k, None) for k in _SOURCE_FLAGS}
    return (runner or ingest)(
        args.source, args.name, args.data_root, split_seed=args.split_seed,
        valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
        **{k: v for k, v in options.items() if v is not None},
    )  # fmt: skip


def add_datasets_arguments(parser: argparse.ArgumentParser) -> None:
    """`aevb datasets list` and `aevb datasets show NAME [--version V]`."""
    parser.add_argument(
        "--data-root", help="local folder or fsspec URI (default: $AEVB_DATA_ROOT or ./data)"
    )
    sub = parser.add_subparsers(dest="datasets_command", required=True)
    sub.add_parser("list", help="every dataset with its current version, shape and rows")
    show = sub.add_parser("show", help="one dataset's manifest and all its versions")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--version", help="a version id (default: CURRENT)")


def datasets_command(args: argparse.Namespace) -> int:
    """Print `aevb datasets list|show` and return exit code 0 (DatasetError for unknown names)."""
    print(format_datasets(args))
    return 0


def format_datasets(args: argparse.Namespace) -> str:
    """Text for `aevb datasets list|show NAME [--version V]` (``args.action`` or ``args.datasets_command``)."""
    root = resolve_data_root(getattr(args, "data_root", None))
    action = getattr(args, "action", None) or getattr(args, "datasets_command", None)
    if action == "show" and not getattr(args, "name", None):
        raise DatasetError("`aevb datasets show` needs a dataset NAME; see `aevb datasets list`")
    if action == "list":
        rows = [
            f"{'NAME':<24} {'VERSION':<16} {'SHAPE':<12} {'DTYPE':<8} {'TRAIN':>8} {'VALID':>7} {'TEST':>7}  CREATED"
        ]
        for m in list_datasets(root):
            shape = "x".join(map(str, m.feature_shape))
            rows.append(
                f"{m.name:<24} {m.version:<16} {shape:<12} {m.storage_dtype:<8} {m.rows.get(TRAIN, 0):>8} "
                f"{m.rows.get(VALID, 0):>7} {m.rows.get(TEST, 0):>7}  {m.created_at}"
            )
        if len(rows) == 1:
            return f"no datasets under {root}; create one with `aevb ingest digits --name digits`"
        return "\n".join(rows)
    manifest = load_manifest(root, args.name, getattr(args, "version", None))
    current = current_version(root, args.name)
    doc = json.loads(manifest.to_json())
    doc["path"] = version_dir(root, args.name, manifest.version)
    doc["versions"] = [
        f"{v}{' (CURRENT)' if v == current else ''}" for v in list_versions(root, args.name)
    ]
    return json.dumps(doc, indent=2)
