"""Where fan-out tasks run: Prefect's thread pool (the default) or a Dask cluster (prefect-dask).

    threads   ThreadPoolTaskRunner(max_workers)       in this process; TF is imported once
    dask      DaskTaskRunner(address="tcp://host:8786")   an existing Dask cluster (dask-scheduler)
              DaskTaskRunner(LocalCluster(processes=False))  no address: a local Dask cluster whose
              workers are threads of this process (a process-based cluster would re-import
              TensorFlow in each worker, about 35 s each on a small machine)

Tasks only exchange paths, names and versions, so what a Dask worker needs is the data root and
the MLflow store to be reachable from it (an object-store URI and a tracking server on a cluster).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from models.errors import ConfigError

RunnerKind = Literal["threads", "dask"]
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


def make_task_runner(
    kind: str = "threads", address: str | None = None, workers: int | None = None
) -> TaskRunner:
    """A fresh task runner of ``kind``; ``workers`` = threads (threads) or local Dask threads."""
    check_runner(kind, address, workers)
    if kind == "threads":
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


def describe_runner(runner: TaskRunner) -> str:
    """One line for logs and summaries: which runner, and where."""
    address = getattr(runner, "address", None) or getattr(runner, "_address", None)
    if type(runner).__name__ == "DaskTaskRunner":
        return f"dask ({address})" if address else "dask (local cluster, in-process threads)"
    return f"threads (max_workers={getattr(runner, '_max_workers', None) or 'default'})"


__all__ = ["RUNNER_KINDS", "RunnerKind", "check_runner", "describe_runner", "make_task_runner"]
