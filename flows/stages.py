"""One Prefect flow per stage (`aevb ingest|train|evaluate|export`), the stages' retry policy, and
fan-out flows over several sources or datasets (thread pool or Dask, see tasks/fanout.py).

Retry policy: a stage is retried only after a *transient I/O* error - a refused or reset
connection, a timeout, an HTTP 429/5xx from the tracking server, a locked SQLite store, an object
store that cannot be reached. A `PipelineError` (bad input, bad config, diverged training) or any
other exception fails at once: retrying a deterministic failure only repeats it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from prefect import Task, flow
from prefect.futures import wait

from flows.config import PipelineConfig
from models.errors import PipelineError
from tasks.evaluate import EvaluationSummary, evaluate_task
from tasks.export import ExportOutput, export_task
from tasks.ingest import IngestResult, ingest_task, run_ingest_task
from tasks.train import TrainOutput, train_task

# Messages of wrapped errors (MlflowException, pyarrow OSError) that mean "try again later".
_TRANSIENT_TEXT = re.compile(
    r"connection (refused|reset|aborted)|max retries exceeded|timed? ?out|temporarily unavailable|"
    r"service unavailable|too many requests|bad gateway|gateway timeout|database is locked|"
    r"couldn't connect|could not connect|name or service not known|network ?error|"
    r"\b(429|502|503|504)\b|NETWORK_CONNECTION|remotedisconnected",
    re.IGNORECASE,
)
_TRANSIENT_TYPES = {
    "ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "TimeoutException",
    "ConnectError", "ReadError", "NewConnectionError", "MaxRetryError", "ProtocolError",
    "RemoteDisconnected", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
}  # fmt: skip


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


def retry_on_transient_io(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only what `is_transient_io_error` accepts."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except Exception as err:  # noqa: BLE001 - we only classify it
            exc = err
    return is_transient_io_error(exc)


def with_io_retries(task: Task, retries: int = 3, delay_seconds: float = 10.0) -> Task:
    """``task`` with the pipeline's retry policy (``retries`` attempts after a transient error)."""
    return task.with_options(
        retries=retries,
        retry_delay_seconds=delay_seconds,
        retry_condition_fn=retry_on_transient_io,
    )


def run_ingest_stage(
    source: str,
    name: str | None,
    data_root: str | None,
    retries: int = 0,
    delay_seconds: float = 0.0,
    **kwargs: Any,
) -> tuple[IngestResult, bool]:
    """`ingest_task` with retries; returns (result, cache_hit). A cache hit means unchanged source."""
    state = with_io_retries(ingest_task, retries, delay_seconds)(
        source, name, data_root, return_state=True, **kwargs
    )
    result: IngestResult = state.result()
    cached = state.name == "Cached"
    if cached and result.created:
        result = IngestResult(result.name, result.version, result.path, created=False)
    return result, cached


@flow(name="aevb-ingest")
def ingest_flow(
    source: str,
    name: str | None = None,
    data_root: str | None = None,
    split_seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    options: dict | None = None,
) -> IngestResult:
    return run_ingest_task(
        source,
        name,
        data_root,
        split_seed=split_seed,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        **(options or {}),
    )


@flow(name="aevb-train")
def train_flow(
    dataset: str,
    config: PipelineConfig,
    data_root: str | None = None,
    version: str | None = None,
    force: bool = False,
) -> TrainOutput:
    return train_task(dataset, config.model, config.train, data_root, version, force=force)


@flow(name="aevb-evaluate")
def evaluate_flow(
    saved_model_dir: str,
    dataset: str,
    version: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    num_samples: int = 5000,
    batch_size: int = 500,
    seed: int = 0,
    run_id: str | None = None,
) -> EvaluationSummary:
    return evaluate_task(
        saved_model_dir,
        dataset,
        version,
        data_root,
        split,
        num_samples,
        batch_size,
        seed,
        run_id=run_id,
    )


@flow(name="aevb-export")
def export_flow(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    batch_size: int = 2000,
) -> ExportOutput:
    return export_task(model_uri, dataset, data_root, version, splits, batch_size)


# ----------------------------------------------------------------------------- fan-out
@flow(name="aevb-ingest-many")
def ingest_many_flow(
    sources: list[str],
    names: list[str] | None = None,
    data_root: str | None = None,
    split_seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    retries: int = 3,
) -> list[IngestResult]:
    """Ingest each source (e.g. one shard/partition per file) as its own dataset, concurrently."""
    names = names or [None] * len(sources)
    if len(names) != len(sources):
        raise PipelineError(f"{len(sources)} sources but {len(names)} names; give one per source")
    stage = with_io_retries(ingest_task, retries, 1.0)
    futures = [
        stage.submit(
            s,
            n,
            data_root,
            split_seed=split_seed,
            valid_fraction=valid_fraction,
            test_fraction=test_fraction,
        )  # fmt: skip
        for s, n in zip(sources, names, strict=True)
    ]
    wait(futures)
    return [f.result() for f in futures]


@flow(name="aevb-export-many")
def export_many_flow(
    model_uri: str,
    datasets: list[str],
    data_root: str | None = None,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    batch_size: int = 2000,
    retries: int = 3,
) -> list[ExportOutput]:
    """Export one model's latent table for each dataset (current versions), concurrently."""
    stage = with_io_retries(export_task, retries, 1.0)
    futures = [
        stage.submit(model_uri, d, data_root, None, tuple(splits), batch_size) for d in datasets
    ]
    wait(futures)
    return [f.result() for f in futures]


def on_runner(
    flow_fn: Callable, kind: str = "threads", address: str | None = None, workers: int | None = None
) -> Callable:
    """``flow_fn`` with the task runner of `tasks.fanout.make_task_runner` (threads or Dask)."""
    from tasks.fanout import make_task_runner

    return flow_fn.with_options(task_runner=make_task_runner(kind, address, workers))
