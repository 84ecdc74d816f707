"""What a source may read: regular, readable files inside the source, never special files.

A FIFO blocks its reader forever, a device never ends, a socket cannot be read and a symlink can
point anywhere on the machine. So before a byte of a source is read, every file it will read is
checked, and the first offending one is refused with a one-line `DatasetError`:

- a file (the source itself, a labels file, each file under a source folder) must be a regular
  file after following symlinks, and this process must be able to open it for reading;
- inside a source folder, a symlink (to a file or a folder) must resolve to a place inside the
  folder; symlinked sub-folders that stay inside are not followed (their files would count twice);
- hidden entries (names starting with '.') are ignored, as everywhere in ingestion.
"""

from __future__ import annotations

import os
import stat

from models.errors import DatasetError

_SPECIAL = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def special_kind(mode: int) -> str | None:
    """'FIFO (named pipe)', 'socket', 'character device', 'block device', or None."""
    return next((name for test, name in _SPECIAL if test(mode)), None)


def check_file(path: str, what: str = "source file", label: str | None = None) -> str:
    """``path`` if it is a regular file this process can read; DatasetError naming the fix.

    Messages start with ``label`` (default: ``what`` and the path)."""
    name = label or f"{what} {path!r}"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as exc:
        broken = " (a broken symlink)" if os.path.islink(path) else ""
        raise DatasetError(f"{name} does not exist{broken}; check the path") from exc
    except OSError as exc:
        raise DatasetError(f"{name} cannot be examined ({exc.strerror})") from exc
    kind = special_kind(mode)
    if kind is not None:
        raise DatasetError(
            f"{name} is a {kind}, not a regular file; sources are read from regular "
            "files only: remove it from the source or point at the real data file"
        )
    if stat.S_ISDIR(mode):
        raise DatasetError(f"{name} is a folder; expected a file")
    try:  # O_NONBLOCK: even a file swapped for a FIFO since the stat cannot block the open
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except PermissionError as exc:
        raise DatasetError(
            f"{name} cannot be read (permission denied); fix its permissions "
            "(e.g. chmod u+r) or run as a user who may read it"
        ) from exc
    except OSError as exc:
        raise DatasetError(f"{name} cannot be opened ({exc.strerror})") from exc
    return path


def _inside(real_folder: str, path: str) -> bool:
    target = os.path.realpath(path)
    return target == real_folder or target.startswith(real_folder.rstrip(os.sep) + os.sep)


def _refuse_escape(folder: str, path: str) -> None:
    raise DatasetError(
        f"source folder {folder!r}: {os.path.relpath(path, folder)!r} is a symlink to "
        f"{os.path.realpath(path)!r}, outside the folder; copy the data into the folder or "
        "remove the link"
    )


def check_folder(folder: str) -> list[str]:
    """Sorted relative paths ('/'-separated) of the regular files a source folder holds, after
    checking each (see the module docstring); DatasetError on the first offender."""
    real = os.path.realpath(folder)

    def unlistable(exc: OSError) -> None:
        raise DatasetError(
            f"source folder {folder!r}: {exc.filename!r} cannot be listed ({exc.strerror}); "
            "fix its permissions"
        ) from exc

    found = []
    for here, dirs, names in os.walk(folder, onerror=unlistable):
        keep = []
        for d in sorted(dirs):
            full = os.path.join(here, d)
            if d.startswith("."):
                continue
            if os.path.islink(full):
                if not _inside(real, full):
                    _refuse_escape(folder, full)
                continue  # not followed (os.walk does not either)
            keep.append(d)
        dirs[:] = keep
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = os.path.join(here, name)
            if os.path.islink(full) and not _inside(real, full):
                _refuse_escape(folder, full)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            check_file(full, label=f"{rel!r} in source folder {folder!r}")
            found.append(rel)
    return sorted(found)


def check_path(path: str, what: str = "source") -> list[str] | None:
    """A source file or folder checked before reading: the folder's files, or None for a file."""
    if os.path.isdir(path):
        return check_folder(path)
    check_file(path, what)
    return None
