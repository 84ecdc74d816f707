"""The paper's experiments (Kingma & Welling 2013, Sec. 5 and App. D-F) run on this code base and
written up as a report: experiments.py (the runs), settings.py (quick/full budgets), figures.py
(PNG figures), report.py (report.md, results.json/csv, the MLflow run).
"""

from tasks.reproduce.experiments import (
    EXPERIMENTS,
    check_dataset,
    experiment_task,
    load_arrays,
    log_report_task,
    run_experiment,
    write_report_task,
)
from tasks.reproduce.report import EXPERIMENT, log_report, render_markdown, write_report
from tasks.reproduce.settings import DATA_NOTES, ReproduceSettings, full_settings, quick_settings
from tasks.reproduce.summary import summarize

__all__ = [
    "DATA_NOTES",
    "EXPERIMENT",
    "EXPERIMENTS",
    "ReproduceSettings",
    "check_dataset",
    "experiment_task",
    "full_settings",
    "load_arrays",
    "log_report",
    "log_report_task",
    "quick_settings",
    "render_markdown",
    "run_experiment",
    "summarize",
    "write_report",
    "write_report_task",
]
