"""Source readers for `aevb ingest SOURCE`: built-ins and generic file formats.

`load_source(source, **options)` dispatches on a built-in name or on the path's format (or an
explicit ``format=``) and returns a validated `SourceData`. Readers never write anything.
"""

from __future__ import annotations

import hashlib
import inspect
import os

from models.errors import DatasetError
from tasks.sources.base import SourceData, sha256_files

FORMATS = ("idx", "csv", "npz", "images", "parquet")


def detect_format(path: str) -> str:
    """Guess the format of a file or folder from names and magic bytes."""
    from tasks.sources.detect import detect

    return detect(path)


def content_sha256(source: str, options: dict | None = None) -> str:
    """sha256 of the bytes a source reads: a file, every file under a folder, or a built-in's file."""
    from tasks.sources import builtin

    options = options or {}
    if source == "digits":
        return sha256_files([builtin.digits_path()])
    if source == "mnist-5k":
        return sha256_files([builtin.mnist_5k_path()])
    if source == "fashion-mnist":
        source = str(options.get("path") or builtin.FASHION_MNIST_DIR)
    if not os.path.exists(source):
        return ""  # load_source reports the missing path
    extra = [str(options["labels_file"])] if options.get("labels_file") else []
    if os.path.isfile(source):
        return sha256_files([source, *extra])
    files = sorted(
        os.path.join(d, f)
        for d, _, names in os.walk(source)
        for f in names
        if not f.startswith(".")
    )
    h = hashlib.sha256()
    for path in files:  # relative names matter in folders (sub-folder labels, image ids)
        h.update(os.path.relpath(path, source).encode() + b"\0" + sha256_files([path]).encode())
    return h.hexdigest()


def load_source(source: str, *, format: str | None = None, **options: object) -> SourceData:
    """Read ``source`` (a built-in name, a file or a folder) into memory, validated."""
    data = _load(source, format=format, **options)
    data.sha256 = content_sha256(source, options)
    return data


def _load(source: str, *, format: str | None = None, **options: object) -> SourceData:
    from tasks.sources import builtin

    if source == "digits":
        _no_options(source, options)
        return builtin.load_digits_source()
    if source == "mnist-5k":
        _no_options(source, options)
        return builtin.load_mnist_5k_source()
    if source == "fashion-mnist":
        return builtin.load_fashion_mnist_source(options.pop("path", None))  # type: ignore[arg-type]
    if not os.path.exists(source):
        raise DatasetError(
            f"source {source!r} is neither a built-in ({', '.join(builtin.BUILTINS)}) nor an "
            "existing file or folder; check the path"
        )
    fmt = format or detect_format(source)
    if fmt not in FORMATS:
        raise DatasetError(
            f"unknown format {fmt!r} for {source!r}; choose one of {', '.join(FORMATS)}"
        )
    reader = _readers()[fmt]
    allowed = [p for p in inspect.signature(reader).parameters if p not in ("path", "folder")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DatasetError(
            f"option {unknown[0]!r} does not apply to {fmt} sources; valid options: {', '.join(allowed)}"
        )
    return reader(source, **options)


def _readers() -> dict:
    from tasks.sources.idx import load_idx_source
    from tasks.sources.images import load_image_folder_source
    from tasks.sources.tabular import load_csv_source, load_npz_source, load_parquet_source

    return {
        "idx": load_idx_source,
        "csv": load_csv_source,
        "npz": load_npz_source,
        "images": load_image_folder_source,
        "parquet": load_parquet_source,
    }


def _no_options(source: str, options: dict) -> None:
    if options:
        raise DatasetError(f"source {source!r} takes no options; got {', '.join(sorted(options))}")


__all__ = ["FORMATS", "SourceData", "content_sha256", "detect_format", "load_source"]
