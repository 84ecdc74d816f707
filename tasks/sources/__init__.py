"""Source readers for `aevb ingest SOURCE`: built-ins and generic file formats.

`load_source(source, **options)` dispatches on a built-in name or on the path's format (or an
explicit ``format=``) and returns a validated `SourceData`. Readers never write anything.
`check_options` (types and values of reader options) and `check_source` (the path, its files and
its format, without reading the data) are cheap, so the CLI and the config loader call them
before any work starts. Special files and symlinks leaving a folder are refused (`files`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from typing import TYPE_CHECKING, Any

from models.errors import ConfigError, DatasetError
from tasks.sources.files import check_file, check_path

if TYPE_CHECKING:
    from tasks.sources.base import SourceData

FORMATS = ("idx", "csv", "npz", "images", "parquet")
STORAGE_DTYPES = ("auto", "uint8", "float32")
COLORS = ("auto", "grayscale", "rgb")
_TEXT_OPTIONS = ("path", "id_column", "label_column", "x_column", "labels_file")


def _option_problem(key: str, value: Any) -> str | None:
    """What is wrong with one reader option's value (None: nothing)."""
    if key == "format":
        return None if value in FORMATS else f"choose one of {', '.join(FORMATS)}"
    if key == "scale":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and math.isfinite(value) and value > 0
        return None if ok else "must be a finite number > 0 (model input = stored value * scale)"
    if key == "storage_dtype":
        return None if value in STORAGE_DTYPES else f"choose one of {', '.join(STORAGE_DTYPES)}"
    if key == "color":
        return None if value in COLORS else f"choose one of {', '.join(COLORS)}"
    if key == "labels_from_folders":
        return None if isinstance(value, bool) else "must be true or false"
    if key == "feature_columns":
        ok = (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(c, str) and c.strip() for c in value)
        )
        return None if ok else 'must be a non-empty list of column names, e.g. ["a", "b"]'
    if key in _TEXT_OPTIONS:
        return None if isinstance(value, str) and value.strip() else "must be a non-empty string"
    return "is not a reader option"


def check_options(options: dict[str, Any], where: str = "") -> None:
    """ConfigError naming the first reader option of the wrong type, value or name.

    ``where`` prefixes the option's name (``data.options.`` in a config file)."""
    valid = sorted((*_TEXT_OPTIONS, "format", "scale", "storage_dtype", "color",
                    "labels_from_folders", "feature_columns"))  # fmt: skip
    for key, value in options.items():
        if value is None:
            continue
        problem = _option_problem(key, value)
        if problem is not None:
            known = "" if key in valid else f"; reader options: {', '.join(valid)}"
            raise ConfigError(f"{where}{key}={value!r} {problem}{known}")


def check_source(source: str, options: dict[str, Any] | None = None) -> str:
    """Check a source before reading it: the option values, the path and every file it will
    read (no special files, no symlinks leaving it), and its format; returns the format."""
    from tasks.sources import builtin

    options = {k: v for k, v in (options or {}).items() if v is not None}
    check_options(options)
    if source in ("digits", "mnist-5k"):
        _no_options(source, options)
        return source
    if source == "fashion-mnist":
        source = str(options.get("path") or builtin.FASHION_MNIST_DIR)
        if not os.path.isdir(source):
            return "idx"  # the reader says how to get the files
    if not os.path.lexists(source):
        raise DatasetError(
            f"source {source!r} is neither a built-in ({', '.join(builtin.BUILTINS)}) nor an "
            "existing file or folder; check the path"
        )
    check_path(source)
    if options.get("labels_file"):
        check_file(str(options["labels_file"]), "labels file")
    fmt = options.get("format") or detect_format(source)
    _reader_for(fmt, source, options)
    if fmt == "csv":
        from tasks.sources.tabular import check_text

        check_text(source)
    elif fmt == "idx":
        from tasks.sources.idx import check_pairs

        check_pairs(source, options.get("labels_file"))
    return fmt


def detect_format(path: str) -> str:
    """Guess the format of a file or folder from names and magic bytes."""
    from tasks.sources.detect import detect

    return detect(path)


def content_sha256(source: str, options: dict | None = None) -> str:
    """sha256 of the bytes a source reads: a file, every file under a folder, or a built-in's file."""
    from tasks.sources import builtin
    from tasks.sources.base import sha256_files

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
    if not os.path.isdir(source):
        check_file(source)
        return sha256_files([source, *(check_file(f, "labels file") for f in extra)])
    h = hashlib.sha256()
    for rel in check_path(source) or []:  # relative names matter (sub-folder labels, image ids)
        h.update(rel.encode() + b"\0" + sha256_files([os.path.join(source, rel)]).encode())
    return h.hexdigest()


def load_source(source: str, *, format: str | None = None, **options: object) -> SourceData:
    """Read ``source`` (a built-in name, a file or a folder) into memory, validated."""
    data = _load(source, format=format, **options)
    data.sha256 = content_sha256(source, options)
    return data


def _load(source: str, *, format: str | None = None, **options: object) -> SourceData:
    from tasks.sources import builtin

    check_options({"format": format, **options})
    if source == "digits":
        _no_options(source, options)
        return builtin.load_digits_source()
    if source == "mnist-5k":
        _no_options(source, options)
        return builtin.load_mnist_5k_source()
    if source == "fashion-mnist":
        return builtin.load_fashion_mnist_source(options.pop("path", None))  # type: ignore[arg-type]
    if not os.path.lexists(source):
        raise DatasetError(
            f"source {source!r} is neither a built-in ({', '.join(builtin.BUILTINS)}) nor an "
            "existing file or folder; check the path"
        )
    check_path(source)
    fmt = format or detect_format(source)
    return _reader_for(fmt, source, options)(source, **options)


def _reader_for(fmt: str, source: str, options: dict[str, Any]):
    """The reader of ``fmt``, after checking that every option applies to it."""
    if fmt not in FORMATS:
        raise DatasetError(
            f"unknown format {fmt!r} for {source!r}; choose one of {', '.join(FORMATS)}"
        )
    reader = _readers()[fmt]
    allowed = [p for p in inspect.signature(reader).parameters if p not in ("path", "folder")]
    unknown = sorted(set(options) - set(allowed) - {"format"})
    if unknown:
        raise DatasetError(
            f"option {unknown[0]!r} does not apply to {fmt} sources; valid options: {', '.join(allowed)}"
        )
    return reader


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


def __getattr__(name: str) -> Any:
    """`SourceData` on first use: tasks.sources.base imports numpy, and the config checks
    (`check_options`, `check_source`, run by `aevb --help`'s defaults too) need none."""
    if name == "SourceData":
        from tasks.sources.base import SourceData

        return SourceData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "SourceData",
    "check_options",
    "check_source",
    "content_sha256",
    "detect_format",
    "load_source",
]
