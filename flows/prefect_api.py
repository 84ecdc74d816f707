"""Prefect's temporary API server for one `aevb` process, bound to that process's life.

Without PREFECT_API_URL, Prefect starts a temporary server (uvicorn serving
`prefect.server.api.server:create_app`, ~250 MB) as a child of the first process that needs an API
and stops it from an `atexit` hook, so a SIGKILLed `aevb` left it running forever. The CLI starts
that server itself, as Prefect does (same app factory, same environment switches), but guarded:

- the parent binds the listening socket (127.0.0.1, a free port) and hands it to the child, so the
  URL is known at once and no port race exists; the parent closes its copy;
- the child asks Linux to SIGKILL it when the parent dies (``prctl(PR_SET_PDEATHSIG)``, set only
  when started from the main thread: the signal follows the creating *thread*), and a watch thread
  in the child stops it when a pipe from the parent reaches EOF (the parent is gone, however it
  died, on any POSIX system) or its parent pid changes;
- `stop()` (end of the command, on success and on error) drains Prefect's log and event workers,
  terminates the child and waits for it.

`TemporaryServer.start()` does not wait: `wait_ready()` does, so a caller can start the server
early and let it come up in parallel with other work. `serving(needed)` is what the CLI uses: it
does nothing when PREFECT_API_URL is set (a real server, or the test harness's), else it starts
a server and points PREFECT_API_URL at it at once, without waiting: the verb imports Prefect,
MLflow and TensorFlow (seconds) while the server starts on the other core. The first Prefect
API client this process opens (`SyncPrefectClient.__enter__` / `PrefectClient.__aenter__`,
wrapped while a server is starting) waits for ``/health`` first, so a server that failed or
timed out is still one line; a verb that never talks to the API never waits. Finally the server
is stopped. (Were a request to slip past the wrapper, it would queue on the already-listening
socket until the server accepts it.)
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.abc
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.errors import PipelineError
from tasks.logs import TEMPORARY_API_ENV

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
API_URL = "PREFECT_API_URL"
STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# What Prefect's own SubprocessASGIServer sets for its temporary server (no UI, ephemeral mode).
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
CHILD_MARK = "aevb-prefect-api"  # in the child's command line, so tests and `ps` can find it
_PR_SET_PDEATHSIG = 1


def configured_api_url() -> str:
    """The API URL this process already uses ('' if none): the environment, else Prefect's
    settings when Prefect is imported (the test harness sets them without the environment)."""
    url = os.environ.get(API_URL, "")
    if not url and "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value() or ""
    return url


class TemporaryServer:
    """One guarded temporary Prefect API server (see the module docstring)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._watch_w: int | None = None
        self._previous_url: str | None = None
        self._active = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> str:
        """Spawn the server on a free loopback port (no waiting); returns its API URL."""
        if self.proc is not None:
            return self.url
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        watch_r, self._watch_w = os.pipe()
        env = {**os.environ, **SERVER_ENV}
        env.pop(API_URL, None)
        death_signal = threading.current_thread() is threading.main_thread()
        code = f"import sys; sys.path.insert(0, {REPO_ROOT!r}); import flows.prefect_api as a; a.child()"
        args = [str(sock.fileno()), str(watch_r), str(os.getpid()), str(int(death_signal))]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, CHILD_MARK, *args],
                pass_fds=(sock.fileno(), watch_r),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(watch_r)
            sock.close()  # the child holds it now; ours would queue connections after it died
        return self.url

    def wait_ready(self, timeout: float | None = None, stop_on_timeout: bool = True) -> None:
        """Block until ``/health`` answers; PipelineError if the server exits or times out."""
        assert self.proc is not None, "start() first"
        limit = timeout if timeout is not None else float(os.environ.get(STARTUP_TIMEOUT, 90))
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PipelineError(
                    f"Prefect's temporary API server exited with code {self.proc.returncode} "
                    "while starting (its error is printed above); fix that, or set "
                    "PREFECT_API_URL to a running server (`prefect server start`)"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        if stop_on_timeout:
            self.stop()
        raise PipelineError(
            f"Prefect's temporary API server did not answer within {limit:g} s "
            f"({STARTUP_TIMEOUT}); raise it on a loaded machine, or set PREFECT_API_URL to a "
            "running server (`prefect server start`)"
        )

    def activate(self) -> None:
        """Point this process (and the processes it starts) at the server."""
        self._previous_url = os.environ.get(API_URL)
        os.environ[API_URL] = self.url
        os.environ[TEMPORARY_API_ENV] = self.url  # its links die with it (tasks/logs.py)
        self._active = True
        _refresh_prefect_settings()

    def stop(self) -> None:
        """Drain Prefect's workers, stop the server and forget it (safe to call twice)."""
        if self._active:
            _drain_prefect_workers()
            os.environ.pop(TEMPORARY_API_ENV, None)
            if self._previous_url is None:
                os.environ.pop(API_URL, None)
            else:
                os.environ[API_URL] = self._previous_url
            self._active = False
            _refresh_prefect_settings()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._watch_w is not None:
            os.close(self._watch_w)
            self._watch_w = None


def make_prefect_home() -> None:
    """Create PREFECT_HOME with its parents (the CLI, before anything imports Prefect): Prefect
    makes only the last folder, so a new `PREFECT_HOME=/new/place/prefect` warned at import and
    the temporary server exited with code 3."""
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(
            f"PREFECT_HOME={home}: cannot create it ({exc.strerror}); set PREFECT_HOME to a "
            "writable folder"
        ) from exc


@contextlib.contextmanager
def serving(needed: bool = True, wait: bool = False) -> Iterator[TemporaryServer | None]:
    """A guarded temporary server for the block when ``needed`` and no API is configured.

    It is started and activated at once; the first Prefect client waits for it (``wait=True``:
    wait here instead)."""
    if not needed or configured_api_url():
        yield None
        return
    server = TemporaryServer()
    try:
        server.start()
        server.activate()
        if wait:
            server.wait_ready()
        else:
            _clients_wait_for(server)
        yield server
    finally:
        _clients_wait_for(None)
        server.stop()


class _Pending:
    """The server the next Prefect client must wait for (None: nobody waits); waited for once,
    by whichever thread gets there first, the others block on the lock meanwhile."""

    server: TemporaryServer | None = None
    error: PipelineError | None = None
    lock = threading.Lock()


def ensure_api_ready() -> None:
    """Block until the server `serving()` started answers (no-op without one, or once done);
    its start-up failure is raised as the same PipelineError every time."""
    with _Pending.lock:
        server = _Pending.server
        if server is not None and _Pending.error is None:
            try:
                server.wait_ready(stop_on_timeout=False)  # serving() stops it, after the block
            except PipelineError as exc:
                _Pending.error = exc
            else:
                _Pending.server = None
        if _Pending.error is not None:
            raise _Pending.error


def _clients_wait_for(server: TemporaryServer | None) -> None:
    with _Pending.lock:
        _Pending.server, _Pending.error = server, None
    if server is not None:
        _PatchClientsOnImport.install()


def _patch_clients(module) -> None:
    """Make entering a Prefect API client (sync or async) call `ensure_api_ready()` first."""
    for cls_name, method in (("SyncPrefectClient", "__enter__"), ("PrefectClient", "__aenter__")):
        cls = getattr(module, cls_name)
        original = getattr(cls, method)
        if getattr(original, "_aevb_waits", False):
            continue
        if method == "__aenter__":

            async def entered(self, _original=original):
                ensure_api_ready()
                return await _original(self)
        else:

            def entered(self, _original=original):
                ensure_api_ready()
                return _original(self)

        entered._aevb_waits = True  # type: ignore[attr-defined]
        setattr(cls, method, entered)


class _PatchClientsOnImport(importlib.abc.MetaPathFinder):
    """`_patch_clients` on `prefect.client.orchestration` now, or right after its first import."""

    NAME = "prefect.client.orchestration"

    @classmethod
    def install(cls) -> None:
        if cls.NAME in sys.modules:
            _patch_clients(sys.modules[cls.NAME])
        elif not any(isinstance(f, cls) for f in sys.meta_path):
            sys.meta_path.insert(0, cls())

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.NAME:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def load(module: Any) -> None:
                exec_module(module)
                _patch_clients(module)

            spec.loader.exec_module = load
        return spec


def _refresh_prefect_settings() -> None:
    """Prefect reads the environment into a global settings context at import: re-read it."""
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _drain_prefect_workers() -> None:
    """Send buffered logs and events before the server goes (as Prefect's test harness does)."""
    if "prefect" not in sys.modules:
        return
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # a worker that never started
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    with contextlib.suppress(Exception):  # best effort: never turn a result into a failure
        run_coro_as_sync(drain())


# ----------------------------------------------------------------------------- the child


def child() -> None:
    """The server process: `python -c ... aevb-prefect-api SOCK_FD WATCH_FD PARENT DEATHSIG`."""
    sock_fd, watch_fd, parent, death_signal = (int(a) for a in sys.argv[2:6])
    if death_signal and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(watch_fd, parent), daemon=True).start()
    import uvicorn

    config = uvicorn.Config(
        "prefect.server.api.server:create_app", factory=True, log_level="error", lifespan="on"
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=sock_fd)])


def _watch_parent(watch_fd: int, parent: int) -> None:
    """Stop this process when the parent's pipe reaches EOF or the parent pid changes."""
    while True:
        ready, _, _ = select.select([watch_fd], [], [], 1.0)
        if (ready and not os.read(watch_fd, 1)) or os.getppid() != parent:
            break
    backstop = threading.Timer(10.0, os._exit, (0,))  # if a graceful shutdown hangs
    backstop.daemon = True
    backstop.start()
    os.kill(os.getpid(), signal.SIGTERM)
