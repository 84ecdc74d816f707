"""One managed, size-bounded cache of downloaded models, keyed by model version.

    <cache>/<key>/                       a downloaded MLflow model (MLmodel, artifacts/saved_model)
    <cache>/<key>/.complete              written last: the entry is whole; its mtime = last use
    <cache>/<key>/.in-use                lock file: a process using the entry holds a shared flock
    <cache>/.<key>.staging-<owner>       a download in progress (tasks/store/publish.py `Stage`)

- **Where**: ``$AEVB_MODEL_CACHE``, else ``$XDG_CACHE_HOME/aevb/models``, else
  ``~/.cache/aevb/models``. **Bound**: ``$AEVB_MODEL_CACHE_MB`` megabytes (default 2048); 0 keeps
  nothing once its command ends.
- **Reuse**: a model version is downloaded once; every later command (export, evaluate, restore,
  the gate's re-scoring, the pipeline) finds it by its key. Versions are immutable, and the key
  also hashes the tracking URI, the version's run id and source, so a re-created store never
  serves a stale copy.
- **Eviction**: after each download and when a command ends, the least recently used entries go
  until the cache fits, except entries a live process holds (their exclusive flock fails), so a
  running command never loses its model. Locks die with their process: a killed command pins
  nothing, and its half-done download is swept by the next download of that key.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from models.errors import ConfigError

DEFAULT_LIMIT_MB = 2048
COMPLETE = ".complete"
IN_USE = ".in-use"
_HELD: dict[str, int] = {}  # entry path -> fd holding its shared lock in this process


def cache_dir(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("AEVB_MODEL_CACHE"):
        return os.path.abspath(os.path.expanduser(env["AEVB_MODEL_CACHE"]))
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return os.path.join(base, "aevb", "models")


def limit_bytes(env: Mapping[str, str] | None = None) -> int:
    """``$AEVB_MODEL_CACHE_MB`` in bytes; ConfigError naming the variable when it is not an
    integer >= 0."""
    env = os.environ if env is None else env
    raw = env.get("AEVB_MODEL_CACHE_MB", str(DEFAULT_LIMIT_MB))
    try:
        mb = int(raw.strip())
    except ValueError:
        mb = -1
    if mb < 0:
        raise ConfigError(
            f"AEVB_MODEL_CACHE_MB={raw!r} must be an integer >= 0 (megabytes of downloaded "
            f"models kept; default {DEFAULT_LIMIT_MB}, 0 keeps none)"
        )
    return mb * 1024 * 1024


def _hold(entry: str) -> bool:
    """Take a shared lock on a complete entry for this process; False if it is gone."""
    if entry in _HELD:
        return True
    try:
        fd = os.open(os.path.join(entry, IN_USE), os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return False  # evicted between the check and the open
    fcntl.flock(fd, fcntl.LOCK_SH)  # an evictor holds its exclusive lock only for one rename
    try:  # evicted while we waited (and maybe downloaded again: then our lock is on the old one)
        same = os.stat(os.path.join(entry, IN_USE)).st_ino == os.fstat(fd).st_ino
        complete = same and os.path.isfile(os.path.join(entry, COMPLETE))
    except OSError:
        complete = False
    if not complete:
        os.close(fd)
        return False
    _HELD[entry] = fd
    with contextlib.suppress(OSError):
        os.utime(os.path.join(entry, COMPLETE))  # last use, for LRU eviction
    return True


def get(key: str, download: Callable[[str], None]) -> str:
    """The cache entry of ``key``, downloaded by ``download(folder)`` if missing; held by this
    process until `release_all` (or its end)."""
    from tasks.store import fs, publish

    root = cache_dir()
    os.makedirs(root, exist_ok=True)
    entry = fs.join(root, key)
    for _ in range(5):
        if os.path.isfile(os.path.join(entry, COMPLETE)) and _hold(entry):
            return entry
        with publish.Stage(entry) as stage:
            download(stage.uri)
            Path(stage.uri, IN_USE).touch()
            Path(stage.uri, COMPLETE).touch()
            try:
                os.rename(stage.uri, entry)  # fails if another process published it first
            except OSError:
                continue
        if _hold(entry):
            trim(limit_bytes())
            return entry
    raise RuntimeError(f"model cache {root}: could not settle entry {key} after 5 attempts")


def _size(folder: str) -> int:
    total = 0
    for here, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(here, name)).st_size
    return total


def entries() -> list[tuple[float, str, int]]:
    """(last use, path, bytes) of every complete entry, least recently used first."""
    root = cache_dir()
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue
        try:
            used = os.stat(os.path.join(path, COMPLETE)).st_mtime
        except OSError:
            used = 0.0  # incomplete (an older layout, or damaged): first to go
        found.append((used, path, _size(path)))
    return sorted(found)


def _evict(path: str) -> bool:
    """Remove one entry unless a live process holds it."""
    try:
        fd = os.open(os.path.join(path, IN_USE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # in use
    aside = os.path.join(
        os.path.dirname(path), f".{os.path.basename(path)}.evicted-{uuid.uuid4().hex[:8]}"
    )
    try:
        os.rename(path, aside)  # atomically out of sight; holders re-check COMPLETE after locking
    finally:
        os.close(fd)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def trim(limit: int | None = None) -> list[str]:
    """Evict least recently used entries until the cache holds at most ``limit`` bytes (default
    ``$AEVB_MODEL_CACHE_MB``); entries in use are kept. Returns the evicted paths."""
    limit = limit_bytes() if limit is None else limit
    found = entries()
    total = sum(size for _, _, size in found)
    evicted = []
    for _, path, size in found:
        if total <= limit:
            break
        if path not in _HELD and _evict(path):
            evicted.append(path)
            total -= size
    root = cache_dir()
    if os.path.isdir(root):
        from tasks.store import publish

        publish.sweep_all(root)  # downloads whose process is gone
        for name in os.listdir(root):
            if name.startswith(".") and ".evicted-" in name:  # an evictor killed mid-removal
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return evicted


def release_all() -> None:
    """Let go of every entry this process holds (end of a command), then trim to the bound."""
    while _HELD:
        _, fd = _HELD.popitem()
        with contextlib.suppress(OSError):
            os.close(fd)
    if os.path.isdir(cache_dir()):
        trim()
