"""One filesystem layer for every read and write of the stores: local paths and URIs alike.

Locations are strings: an absolute local path, or a URI whose scheme fsspec knows (``s3://``,
``gs://``, ``memory://``, ...). Every operation goes through pyarrow's filesystem interface;
remote schemes are served by their fsspec backend behind it (`pyarrow.fs.FSSpecHandler`), so
Parquet reads and writes, listings and moves use the same object for a given root.

`join` is the only way paths are built from names, and it refuses parts that could leave the base
(empty, ".", "..", or containing a separator): a user-given name or version can never address a
file outside its root.

Storage faults are user errors: every write here turns an OSError (or a pyarrow / TensorFlow error
with the same cause) that means a read-only, full, over-quota or not-permitted store into one
`StorageError` naming the path and the fix (`storage_error`, `storage_guard`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models.errors import DatasetError, StorageError

_BAD_PART_CHARS = ("/", "\\", "\x00")
# errno -> (what is wrong with the store, how to fix it)
_FAULTS = {
    errno.EROFS: ("is on a read-only file system", "remount it read-write"),
    errno.ENOSPC: ("is on a full file system", "free space on it"),
    errno.EDQUOT: ("is over its disk quota", "free space or raise the quota"),
    errno.EACCES: ("is not writable by this user", "fix its permissions"),
    errno.EPERM: ("may not be written by this user", "fix its permissions"),
}
# How pyarrow, TensorFlow, SQLite and object stores say the same, when no errno is attached.
_FAULT_TEXT = (
    ("read-only file system", errno.EROFS),
    ("no space left on device", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("permission denied", errno.EACCES),
    ("operation not permitted", errno.EPERM),
)
ELSEWHERE = (
    "or use another data root (--data-root / AEVB_DATA_ROOT; checkpoints: AEVB_CHECKPOINT_DIR)"
)


def fault_errno(exc: BaseException) -> int | None:
    """The errno of a storage fault (read-only, full, quota, permission) behind ``exc``, or None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None)
        if code in _FAULTS:
            return code
        text = str(e).lower()
        found = re.search(r"\[errno (\d+)\]", text)
        if found and int(found.group(1)) in _FAULTS:
            return int(found.group(1))
        for needle, code in _FAULT_TEXT:
            if needle in text:
                return code
        e = e.__cause__ or e.__context__
    return None


def storage_error(exc: BaseException, path: str, fix: str = ELSEWHERE) -> StorageError | None:
    """The one-line StorageError for ``exc`` if it is a storage fault while writing ``path``."""
    if isinstance(exc, StorageError):
        return exc
    code = fault_errno(exc)
    if code is None:
        return None
    problem, remedy = _FAULTS[code]
    where = _existing_ancestor(path)
    where = "it" if where == normalize(path) else where
    return StorageError(
        f"cannot write {path}: {where} {problem} ({os.strerror(code)}). Fix: {remedy}, {fix}"
    )


def _existing_ancestor(path: str) -> str:
    """The nearest folder of ``path`` that exists (what the user can look at), locally."""
    if not is_local(path):
        return path
    here = os.path.abspath(path)
    while not os.path.exists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    return here


@contextlib.contextmanager
def storage_guard(path: str, fix: str = ELSEWHERE) -> Iterator[None]:
    """Turn a storage fault inside the block into `storage_error(exc, path)`."""
    try:
        yield
    except Exception as exc:
        err = storage_error(exc, path, fix)
        if err is None or err is exc:
            raise
        raise err from exc


def _writes(fn: Callable) -> Callable:
    """A write whose first argument is the location written: storage faults name it."""

    @functools.wraps(fn)
    def wrapper(uri: str, *args: Any, **kwargs: Any) -> Any:
        with storage_guard(uri):
            return fn(uri, *args, **kwargs)

    return wrapper


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


@_writes
def write_bytes(uri: str, data: bytes) -> None:
    """A plain (non-atomic) write; see `tasks.store.publish.write_atomic` for published files."""
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


@_writes
def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


@_writes
def remove(uri: str) -> None:
    """Remove a file or a folder tree; nothing happens when it does not exist."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    with contextlib.suppress(FileNotFoundError):
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


@_writes
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


@_writes
def parquet_writer(uri: str, schema: Any, **options: Any) -> pq.ParquetWriter:
    fs, path = filesystem(uri)
    return pq.ParquetWriter(path, schema, filesystem=fs, **options)


def write_parquet(table: Any, uri: str, **options: Any) -> None:
    fs, path = filesystem(uri)
    with storage_guard(uri):
        pq.write_table(table, path, filesystem=fs, **options)


def read_parquet(uri: str, **options: Any) -> Any:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, **options)
