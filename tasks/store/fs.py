"""One filesystem layer for every read and write of the stores: local paths and URIs alike.

Locations are strings: an absolute local path, or a URI whose scheme fsspec knows (``s3://``,
``gs://``, ``memory://``, ...). Every operation goes through pyarrow's filesystem interface;
remote schemes are served by their fsspec backend behind it (`pyarrow.fs.FSSpecHandler`), so
Parquet reads and writes, listings and moves use the same object for a given root.

`join` is the only way paths are built from names, and it refuses parts that could leave the base
(empty, ".", "..", or containing a separator): a user-given name or version can never address a
file outside its root.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models.errors import DatasetError

_BAD_PART_CHARS = ("/", "\\", "\x00")


def is_local(uri: str) -> bool:
    return "://" not in uri


def normalize(uri: str) -> str:
    """Absolute local path (``~`` expanded, ``file://`` dropped) or a URI without a trailing /."""
    uri = str(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_local(uri):
        return os.path.abspath(os.path.expanduser(uri))
    return uri.rstrip("/")


def check_part(part: str, what: str = "path part") -> str:
    """``part`` if it is one path segment that stays where it is joined; DatasetError otherwise."""
    if (
        not isinstance(part, str)
        or part in ("", ".", "..")
        or any(c in part for c in _BAD_PART_CHARS)
    ):
        raise DatasetError(
            f"{what} {part!r} is not a plain name: it must be one path segment without '/', "
            "'\\', '.' or '..', so it cannot point outside the store"
        )
    return part


def join(base: str, *parts: str) -> str:
    """``base/part/...`` where every part is one checked segment (see `check_part`)."""
    for part in parts:
        check_part(part)
    if not parts:
        return base
    return "/".join([base.rstrip("/"), *parts])


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if is_local(uri):
        return pafs.LocalFileSystem(), uri
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise DatasetError(
            f"cannot open {uri!r}: {exc}; install the fsspec backend for its scheme "
            "(e.g. `pip install s3fs` for s3://) or use a local folder"
        ) from exc
    fs.invalidate_cache()  # another process may have written since we last looked
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return _info(uri).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.File


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def mtime(uri: str) -> float | None:
    """Modification time in seconds since the epoch, or None if unknown or missing."""
    info = _info(uri)
    if info.type == pafs.FileType.NotFound or info.mtime is None:
        return None
    return info.mtime.timestamp()


def entries(uri: str) -> list[tuple[str, bool]]:
    """(name, is_dir) of the folder's direct entries; [] when it does not exist."""
    fs, path = filesystem(uri)
    try:
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in found)


def list_dirs(uri: str) -> list[str]:
    return [name for name, d in entries(uri) if d]


def list_files(uri: str) -> list[str]:
    return [name for name, d in entries(uri) if not d]


def read_bytes(uri: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:  # pyarrow raises OSError for a missing local file, and for folders
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise exc


def read_text(uri: str, where: str | None = None) -> str | None:
    data = read_bytes(uri)
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where or uri}: not UTF-8 text ({exc}); rewrite or remove it") from exc


def read_json(uri: str) -> dict[str, Any] | None:
    text = read_text(uri)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DatasetError(f"{uri}: not valid JSON ({exc}); rewrite or remove it") from exc
    if not isinstance(doc, dict):
        raise DatasetError(f"{uri}: expected a JSON object, found {type(doc).__name__}")
    return doc


def write_bytes(uri: str, data: bytes) -> None:
    """A plain (non-atomic) write; see `tasks.store.publish.write_atomic` for published files."""
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def remove(uri: str) -> None:
    """Remove a file or a folder tree; nothing happens when it does not exist."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    with contextlib.suppress(FileNotFoundError):
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


def copy_tree(src: str, dst: str, *, last: tuple[str, ...] = ()) -> None:
    """Copy every file under ``src`` to the same relative place under ``dst``; files whose name
    is in ``last`` are copied after all others (completeness markers)."""
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    infos = fs.get_file_info(pafs.FileSelector(src_path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    for info in sorted(files, key=lambda i: (i.base_name in last, i.path)):
        target = dst_path + info.path[len(src_path) :]
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fs.copy_file(info.path, target)


@contextlib.contextmanager
def open_parquet(uri: str) -> Iterator[pq.ParquetFile]:
    """A ParquetFile over a local file or a URI, closed when the block ends."""
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as fh:
        yield pq.ParquetFile(fh)


def parquet_writer(uri: str, schema: Any, **options: Any) -> pq.ParquetWriter:
    fs, path = filesystem(uri)
    return pq.ParquetWriter(path, schema, filesystem=fs, **options)


def write_parquet(table: Any, uri: str, **options: Any) -> None:
    fs, path = filesystem(uri)
    pq.write_table(table, path, filesystem=fs, **options)


def read_parquet(uri: str, **options: Any) -> Any:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, **options)
