"""The paper's experiments (Kingma & Welling 2013, Sec. 5 and App. D-F) run on this code base and
written up as a report: experiments.py (the runs), settings.py (quick/full budgets), figures.py
(PNG figures), report.py (report.md, results.json/csv, the MLflow run).
"""

import importlib
from typing import Any

# Names are loaded on first use (PEP 562): the experiments import TensorFlow, and the CLI checks
# its arguments (tasks.reproduce.settings) before anything heavy is imported.
_WHERE = {
    **dict.fromkeys(
        (
            "EXPERIMENTS",
            "check_dataset",
            "experiment_task",
            "load_arrays",
            "log_report_task",
            "run_experiment",
            "write_report_task",
        ),
        "experiments",
    ),
    **dict.fromkeys(("EXPERIMENT", "log_report", "render_markdown", "write_report"), "report"),
    **dict.fromkeys(
        ("DATA_NOTES", "ReproduceSettings", "full_settings", "quick_settings"), "settings"
    ),
    "summarize": "summary",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tasks.reproduce' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tasks.reproduce.{_WHERE[name]}"), name)


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
