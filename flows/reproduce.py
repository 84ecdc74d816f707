"""The `reproduce` flow: rerun the paper's experiments and write the report (`aevb reproduce`).

    reproduce_flow(quick=True, out_dir="reproduce-report")

runs each experiment of `tasks.reproduce.EXPERIMENTS` as a task (one after another: they are
CPU-bound and the machine has few cores), writes `report.md`, PNG figures, `results.json` and
`results.csv` into ``out_dir`` (rewritten after every experiment, so an interrupted run keeps the
finished parts), and logs them as one MLflow run in the "aevb-reproduce" experiment.
Quick mode takes a few minutes on 2 idle cores, full mode is sized for about an hour (measured
run times on a shared machine: docs/reproduce.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow

from flows.settings import quiet_user_error_tracebacks
from models.errors import ConfigError
from tasks.reproduce import (
    EXPERIMENTS,
    experiment_task,
    full_settings,
    log_report_task,
    quick_settings,
    summarize,
    write_report,
    write_report_task,
)

quiet_user_error_tracebacks()  # as under the CLI, for flows started from Python


@dataclass(frozen=True)
class ReproduceSummary:
    report: str  # path of report.md
    out_dir: str
    mode: str
    mlflow_run_id: str | None
    seconds: dict[str, float]
    summary: dict[str, float]  # headline numbers and claim checks (see tasks.reproduce.summarize)


@flow(name="aevb-reproduce", log_prints=True)
def reproduce_flow(
    quick: bool = True,
    out_dir: str = "reproduce-report",
    seed: int = 0,
    dataset: str = "mnist-5k",
    experiments: Sequence[str] | None = None,
    track: bool = True,
    overrides: dict[str, Any] | None = None,
) -> ReproduceSummary:
    """Run the chosen ``experiments`` (default: all) in quick or full mode and write the report.

    ``overrides`` replaces individual `tasks.reproduce.ReproduceSettings` fields (e.g. smaller
    budgets); ``track=False`` skips MLflow.
    """
    names = list(experiments or EXPERIMENTS)
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise ConfigError(f"unknown experiments {unknown}; choose from {sorted(EXPERIMENTS)}")
    make = quick_settings if quick else full_settings
    settings = make(seed=seed, dataset=dataset, **(overrides or {}))
    out = str(Path(out_dir).resolve())
    Path(out).mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        results[name] = experiment_task(name, settings, out)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"reproduce: {name} done in {seconds[name]:.0f} s")
        if len(results) < len(names):  # an interrupted run still leaves the finished parts
            write_report(results, settings, out, seconds)
    report = write_report_task(results, settings, out, seconds)
    run_id = log_report_task(out, settings, results) if track else None
    print(f"reproduce: report at {report}" + (f"; MLflow run {run_id}" if run_id else ""))
    return ReproduceSummary(report, out, settings.mode, run_id, seconds, summarize(results))


__all__ = ["ReproduceSummary", "reproduce_flow"]
