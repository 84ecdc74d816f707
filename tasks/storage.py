"""Small filesystem helpers over pyarrow.fs so stages work on local folders and URIs alike."""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow.fs as pafs


def join(root: str, *parts: str) -> str:
    return (
        posixpath.join(root.rstrip("/"), *parts) if "://" in root else posixpath.join(root, *parts)
    )


def filesystem(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or any pyarrow-supported URI."""
    if "://" in uri_or_path:
        return pafs.FileSystem.from_uri(uri_or_path)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(uri_or_path)


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read().decode())


def write_json(fs: pafs.FileSystem, path: str, data: dict[str, Any]) -> None:
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True).encode())


def replace_dir(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Move a fully written folder into place; an older folder at ``dst`` is removed first."""
    if fs.get_file_info(dst).type != pafs.FileType.NotFound:
        fs.delete_dir(dst)
    fs.move(src, dst)
