"""Logging that goes to Prefect's run logger inside a flow/task and to the console outside one;
progress lines of long stages; where the current Prefect flow run is (for lineage)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any


def logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        # "prefect.aevb": Prefect's console handler prints it, once, in Prefect's format (a handler
        # of our own would print every line twice and pin whatever sys.stderr was at first use).
        from prefect.logging import get_logger

        return get_logger("aevb")


# Set (by flows/prefect_api.py) to the URL of the command's own temporary Prefect server while it
# runs: links to it are dead once the command ends, so none are recorded.
TEMPORARY_API_ENV = "AEVB_TEMPORARY_PREFECT_API"


def is_temporary_api(url: str) -> bool:
    temporary = os.environ.get(TEMPORARY_API_ENV, "").rstrip("/")
    return bool(temporary) and url.rstrip("/") == temporary


def prefect_run() -> dict[str, str]:
    """The Prefect flow run this code runs in (also from a task), {} outside one: id, name, flow,
    and a UI link when the API is a server the user runs (PREFECT_API_URL); a temporary server
    (no PREFECT_API_URL) is gone after the command, so its links would be dead."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return {}
    info = {
        "flow_run_id": str(run_id),
        "flow_run_name": flow_run.get_name() or "",
        "flow_name": flow_run.get_flow_name() or "",
    }
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if api and not is_temporary_api(api):
        from prefect.utilities.urls import url_for

        base = api.removesuffix("/api")
        info["flow_run_url"] = url_for("flow-run", obj_id=run_id, default_base_url=base) or ""
    return info


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class ProgressLogger:
    """Progress of a long stage (evaluate, export, restore), like training's per-epoch lines: a
    log line with rows done, rate and ETA at most every ``every_seconds`` (and when done), and a
    Prefect progress bar inside a run (``artifact=True``). Call it with the rows done so far, or
    `add(rows)` per batch; safe to share between threads. ``every_seconds`` defaults to
    $AEVB_PROGRESS_SECONDS, else 10."""

    def __init__(
        self,
        total: int,
        label: str,
        samples_per_row: int = 1,
        every_seconds: float | None = None,
        artifact: bool = True,
    ):
        self.total, self.label, self.samples_per_row = max(int(total), 1), label, samples_per_row
        self.every_seconds = progress_seconds() if every_seconds is None else every_seconds
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.log = logger()
        self._lock = threading.Lock()
        self.artifact_id = _progress_artifact(label) if artifact else None

    def add(self, rows: int) -> None:
        with self._lock:
            done = self.done + int(rows)
        self(done)

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self.done = max(self.done, int(done))
            if now - self.last < self.every_seconds and self.done < self.total:
                return
            if self.done >= self.total and self.last == float("inf"):
                return  # the final line was logged already
            self.last = float("inf") if self.done >= self.total else now
            done = self.done
        elapsed = max(now - self.start, 1e-9)
        eta = (self.total - done) * elapsed / max(done, 1)
        per_second = done * self.samples_per_row / elapsed
        unit = "samples" if self.samples_per_row > 1 else "rows"
        rate = f"{per_second:,.0f} {unit}/s" if per_second >= 100 else f"{per_second:.2f} {unit}/s"
        pct = 100.0 * done / self.total
        self.log.info(
            "%s: %d/%d rows (%.0f%%), %s, ETA %.0f s", self.label, done, self.total, pct, rate, eta
        )
        if self.artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, progress=min(100.0, pct))


def progress_seconds() -> float:
    """$AEVB_PROGRESS_SECONDS (seconds between progress lines; 0 = every batch), default 10."""
    try:
        return max(0.0, float(os.environ.get("AEVB_PROGRESS_SECONDS", "10")))
    except ValueError:
        return 10.0


def _progress_artifact(label: str) -> Any:
    if not in_prefect_run():
        return None
    from prefect.artifacts import create_progress_artifact

    return create_progress_artifact(progress=0.0, description=label)
