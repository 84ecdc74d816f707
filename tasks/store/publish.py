"""Atomic publication for every store: files, folders, crash recovery and staging leftovers.

- `write_atomic(uri, data)`: local files are written to a temporary sibling, fsynced and renamed
  over the target (readers see the old or the new content, never a part); on object stores one
  PUT is atomic by itself.
- `Stage`: a hidden sibling folder (``.<leaf>.staging-<owner>``) that a writer fills; `publish`
  makes it visible at the final place. Locally an absent target is one rename and an existing one
  is swapped in one step with ``renameat2(RENAME_EXCHANGE)`` (elsewhere: rename aside, rename in,
  and `recover` puts back a previous folder stranded by a kill between the two). Object stores
  have no folder rename: the completeness marker (the manifest beside the folder) is removed, the
  parts are copied, and the marker is written last.
- Ownership instead of age: a stage's name carries its writer's host, pid and process start time,
  and on object stores a lease file beside it is renewed while the writer works. `sweep` (run by
  the next writer of the same folder) removes stages whose writer is gone: on this host the pid is
  dead or belongs to another process; elsewhere the lease expired (`LEASE_SECONDS`).
- `fault_point(name)`: the test hook that SIGKILLs the process at a named moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import time
import uuid

from tasks.store import fs

STAGING_MARK = ".staging-"
OLD_MARK = ".old-"
LEASE_SUFFIX = ".lease"
# Stages written from another host are swept once their lease is this old without renewal.
LEASE_SECONDS = float(os.environ.get("AEVB_STAGING_LEASE_SECONDS", 15 * 60))


def fault_point(point: str) -> None:
    """Test hook: SIGKILL this process at a named point (env AEVB_TEST_KILL_AT=<point>)."""
    if os.environ.get("AEVB_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- files


def write_atomic(uri: str, data: bytes) -> None:
    """Replace ``uri`` with ``data`` atomically (see the module docstring)."""
    if not fs.is_local(uri):
        fs.write_bytes(uri, data)
        return
    tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.storage_guard(uri):
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, uri)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_text_atomic(uri: str, text: str) -> None:
    write_atomic(uri, text.encode())


# ----------------------------------------------------------------------------- ownership


def process_start(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ('' if unknown): tells pid reuse apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def host_name() -> str:
    """This host's name as it appears in owner tokens and lock holder records."""
    return "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40] or "host"


def owner_token() -> str:
    """``<host>.<pid>.<start>.<random>``: who writes a stage, readable from its name alone."""
    pid = os.getpid()
    return f"{host_name()}.{pid}.{process_start(pid) or 0}.{uuid.uuid4().hex[:8]}"


def process_alive(pid: int, start: str = "0") -> bool:
    """True if process ``pid`` of THIS host runs and (when ``start`` is known, not "0" or "")
    is the same process that had that start time, not a later one that reused the pid."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return start in ("0", "", process_start(pid))


def _owner_alive(token: str, stage: str) -> bool:
    try:
        host, pid, start, _ = token.split(".")
        pid_n = int(pid)
    except ValueError:
        return False  # not a name we write: an abandoned stage of an older layout
    if host == host_name():
        return process_alive(pid_n, start)
    return time.time() - _renewed_at(stage) < LEASE_SECONDS


def _renewed_at(stage: str) -> float:
    """When the stage's lease was last renewed: the time written in its lease file (object
    stores), else the folder's modification time (local disks); 0 when unknown."""
    text = fs.read_text(stage + LEASE_SUFFIX)
    try:
        return float(text) if text else fs.mtime(stage) or 0.0
    except ValueError:
        return 0.0


class Stage:
    """A hidden folder beside ``final`` that this process fills before `publish`."""

    def __init__(self, final: str):
        self.final = final.rstrip("/")
        leaf = fs.basename(self.final)
        self.uri = fs.join(fs.parent(self.final), f".{leaf}{STAGING_MARK}{owner_token()}")
        self._remote = not fs.is_local(self.uri)
        sweep(self.final)
        fs.makedirs(self.uri)
        self.renew()

    def renew(self) -> None:
        """Keep the lease of a remote stage (cheap; call after each part written)."""
        if self._remote:
            fs.write_bytes(self.uri + LEASE_SUFFIX, str(time.time()).encode())

    def discard(self) -> None:
        fs.remove(self.uri)
        if self._remote:
            fs.remove(self.uri + LEASE_SUFFIX)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # published: gone already (or holds the previous folder after a swap)


def sweep(final: str) -> list[str]:
    """Remove stages (and stranded rename-asides) of ``final`` whose writer is gone; returns them.

    A stranded previous folder (``.<leaf>.old-*``) is put back first when ``final`` is missing.
    """
    recover(final)
    base, leaf = fs.parent(final), fs.basename(final)
    removed = []
    for name, _ in fs.entries(base):
        if not name.startswith(f".{leaf}{STAGING_MARK}") or name.endswith(LEASE_SUFFIX):
            continue
        stage = fs.join(base, name)
        if not _owner_alive(name[len(f".{leaf}{STAGING_MARK}") :], stage):
            fs.remove(stage)
            fs.remove(stage + LEASE_SUFFIX)
            removed.append(stage)
    return removed


def sweep_all(base: str) -> list[str]:
    """`sweep` every staged leaf directly under ``base`` (e.g. all versions of one dataset)."""
    leaves = set()
    for name, _ in fs.entries(base):
        if name.startswith(".") and STAGING_MARK in name:
            leaves.add(name[1:].split(STAGING_MARK, 1)[0])
    return [s for leaf in sorted(leaves) for s in sweep(fs.join(base, leaf))]


# ----------------------------------------------------------------------------- folders

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two local paths (Linux renameat2); False where the kernel/fs cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def publish(stage: Stage, marker: str | None = None, marker_text: str | None = None) -> None:
    """Make the filled ``stage`` visible at its final place, then write the completeness marker
    ``marker`` (the manifest beside the folder) with ``marker_text``.

    Locally a kill leaves the old folder or the new one at the final place, never a mix. On object
    stores the marker is removed first, so a half-copied folder is never marked complete.
    """
    with fs.storage_guard(stage.final):
        _publish(stage, marker, marker_text)


def _publish(stage: Stage, marker: str | None, marker_text: str | None) -> None:
    src, dst = stage.uri, stage.final
    if stage._remote:
        if marker is not None:
            fs.remove(marker)
        fs.remove(dst)
        fs.copy_tree(src, dst)
        fs.remove(src)
    elif not os.path.exists(dst):
        os.rename(src, dst)
    elif not _exchange(src, dst):  # src now holds the previous folder; the Stage removes it
        aside = fs.join(fs.parent(dst), f".{fs.basename(dst)}{OLD_MARK}{uuid.uuid4().hex[:8]}")
        os.rename(dst, aside)
        fault_point("publish_between_renames")
        os.rename(src, dst)
        fs.remove(aside)
    if marker is not None and marker_text is not None:
        write_text_atomic(marker, marker_text)


def recover(final: str) -> None:
    """Put back a previous folder stranded aside by a kill between the fallback's two renames."""
    if not fs.is_local(final) or os.path.exists(final):
        return
    base, leaf = fs.parent(final), fs.basename(final)
    for name in sorted(fs.list_dirs(base)):
        if name.startswith(f".{leaf}{OLD_MARK}"):
            with fs.storage_guard(final):
                os.rename(fs.join(base, name), final)
            return
