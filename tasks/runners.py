"""Where and how tasks run: the task runners of the fan-out stages, and the retry policy.

Runners (`make_task_runner`):

    threads   ThreadPoolTaskRunner(max_workers)       in this process; TF is imported once
    dask      DaskTaskRunner(address="tcp://host:8786")   an existing Dask cluster (dask scheduler)
              DaskTaskRunner(LocalCluster(processes=False))  no address: a local Dask cluster whose
              workers are threads of this process (a process-based cluster would re-import
              TensorFlow in each worker, about 35 s each on a small machine)

Tasks only exchange paths, names and small dicts, so results do not depend on the runner. A Dask
worker needs the data root, the saved model folder and the Prefect API to be reachable from it.

Retry policy (`with_io_retries`): a task is retried only after a *transient I/O* error - a refused
or reset connection, a timeout, an HTTP 429/5xx from the tracking server, a locked SQLite store,
an object store that cannot be reached. A `PipelineError` (bad input, bad config, diverged
training) or any other exception fails at once: retrying a deterministic failure only repeats it.
"""

from __future__ import annotations

import re
from typing import Any

from models.errors import ConfigError, PipelineError

RUNNER_KINDS: tuple[str, ...] = ("threads", "dask")
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+(:\d+)?/?$|^[A-Za-z0-9.\-]+:\d+$")


def check_runner(kind: str, address: str | None = None, workers: int | None = None) -> None:
    """Validate the runner settings up front (the config loader calls this too)."""
    if kind not in RUNNER_KINDS:
        raise ConfigError(
            f"pipeline.task_runner={kind!r} is not allowed; choose one of {', '.join(RUNNER_KINDS)}"
        )
    if address and not _ADDRESS.match(address):
        raise ConfigError(
            f"pipeline.dask_address={address!r} is not a Dask scheduler address; expected e.g. "
            "tcp://10.0.0.5:8786 (or leave it empty for a local cluster)"
        )
    if address and kind != "dask":
        raise ConfigError(
            f"pipeline.dask_address={address!r} needs pipeline.task_runner='dask' (it is {kind!r})"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise ConfigError(f"pipeline.workers={workers!r} must be an integer >= 1")
    if workers is not None and workers < 1:
        raise ConfigError(f"pipeline.workers={workers!r} must be an integer >= 1")


def make_task_runner(kind: str = "threads", address: str | None = None, workers: int | None = None):
    """A fresh task runner of ``kind``; ``workers`` = threads (threads) or local Dask threads."""
    check_runner(kind, address, workers)
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    cluster_kwargs: dict[str, Any] = {
        "processes": False,
        "n_workers": 1,
        "threads_per_worker": workers or 2,
        "dashboard_address": None,  # no HTTP server nobody asked for
    }
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)


# ----------------------------------------------------------------------------- retries

# Messages of wrapped errors (MlflowException, pyarrow OSError) that mean "try again later".
_TRANSIENT_TEXT = re.compile(
    r"connection (refused|reset|aborted)|max retries exceeded|timed? ?out|temporarily unavailable|"
    r"service unavailable|too many requests|bad gateway|gateway timeout|database is locked|"
    r"couldn't connect|could not connect|name or service not known|network ?error|"
    r"\b(429|502|503|504)\b|NETWORK_CONNECTION|remotedisconnected",
    re.IGNORECASE,
)
_TRANSIENT_TYPES = {
    "ConnectionError",
    "Timeout",
    "ConnectTimeout",
    "ReadTimeout",
    "TimeoutException",
    "ConnectError",
    "ReadError",
    "NewConnectionError",
    "MaxRetryError",
    "ProtocolError",
    "RemoteDisconnected",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
}


def is_transient_io_error(exc: BaseException | None) -> bool:
    """True for connection/timeout-type failures (also when wrapped); never for a PipelineError."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PipelineError):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _TRANSIENT_TYPES for cls in type(exc).__mro__):
            return True
        if type(exc).__name__ in ("MlflowException", "OSError", "OperationalError", "ArrowIOError"):
            if _TRANSIENT_TEXT.search(str(exc)):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_on_transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only what `is_transient_io_error` accepts."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except Exception as err:  # noqa: BLE001 - we only classify it
            exc = err
    return is_transient_io_error(exc)


def with_io_retries(task: Any, retries: int = 3, delay_seconds: float = 10.0) -> Any:
    """``task`` with the pipeline's retry policy (``retries`` attempts after a transient error)."""
    return task.with_options(
        retries=retries,
        retry_delay_seconds=delay_seconds,
        retry_condition_fn=retry_on_transient_io,
    )
