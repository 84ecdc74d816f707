"""Process set-up shared by every way of starting a flow: the `aevb` CLI, a scheduled run, a
notebook (`from flows.pipeline import pipeline_flow; pipeline_flow(config)`).

- `apply_env_defaults()` (run by `import flows`, so before anything imports Prefect, MLflow or
  TensorFlow through this package): no telemetry on an offline machine, quiet TensorFlow, and a
  90 s start-up timeout for Prefect's temporary server instead of 20 s; MLflow's INFO lines off
  (`AEVB_QUIET=0` keeps TensorFlow's and MLflow's lines) (its first start runs the
  database migrations, which a loaded machine does not finish in 20 s). Values already in the
  environment win. When Prefect was imported before `flows` (a notebook that did `import prefect`
  first), Prefect's settings are refreshed so the defaults still apply.
- `quiet_user_error_tracebacks()` (run when the flow modules are imported): Prefect logs a
  traceback for every failed task; for a `PipelineError` (bad input or config) the one-line
  message says everything, so those tracebacks are dropped from Prefect's log handlers.

Only the standard library is imported here at module level (`aevb --help` stays fast).
"""

from __future__ import annotations

import logging
import os
import sys

# Offline machine, and nobody wants telemetry from a batch job. TF's C++ log: errors only (its
# INFO/WARNING lines say nothing a user can act on); MLflow's INFO lines ("Creating initial MLflow
# database tables...") off, its warnings kept. AEVB_QUIET=0 keeps every third-party line.
QUIET = os.environ.get("AEVB_QUIET", "1").strip().lower() not in ("0", "false", "no", "off")
ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2" if QUIET else "0",
    **({"MLFLOW_LOGGING_LEVEL": "WARNING"} if QUIET else {}),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


# Set by the `aevb` CLI only, not by `import flows` (a notebook may use tf.keras): TensorFlow's
# import eagerly loads Keras 3 (~2 s, scikit-learn's import within it) unless told that tf.keras is
# Keras 2. Nothing in this package uses Keras, and TFP imports tf-keras (Keras 2) anyway.
CLI_ENV_DEFAULTS = {"TF_USE_LEGACY_KERAS": "1"}


def apply_cli_env_defaults() -> None:
    for key, value in CLI_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def apply_env_defaults() -> list[str]:
    """Set the ENV_DEFAULTS that are not set yet; returns the names it set."""
    added = [k for k in ENV_DEFAULTS if k not in os.environ]
    for key in added:
        os.environ[key] = ENV_DEFAULTS[key]
    if added and "prefect.context" in sys.modules:  # Prefect read its settings already
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return added


def _error_names() -> tuple[str, ...]:
    from models.errors import PipelineError

    found, todo = [], [PipelineError]
    while todo:
        cls = todo.pop()
        found.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return tuple(found)


class DropPipelineErrorTracebacks(logging.Filter):
    """Prefect logs a user error up to four times (task failed, task state, flow exception, flow
    state), with tracebacks; on the console the one-line message is enough. The records still
    reach Prefect's API log handler, so the UI keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from models.errors import PipelineError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            return False
        if not record.name.startswith("prefect"):
            return True
        message = record.getMessage()
        return not any(f"{n}(" in message or f"{n}: " in message for n in _error_names())


_DROP = DropPipelineErrorTracebacks()  # one instance: attaching twice is a no-op


def quiet_user_error_tracebacks() -> None:
    """Attach the filter to every handler Prefect configured (filters on loggers miss propagation)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # `import prefect` alone does not configure its handlers
    names = [
        n for n in logging.Logger.manager.loggerDict if n == "prefect" or n.startswith("prefect.")
    ]
    for name in ["", *names]:
        for handler in logging.getLogger(name).handlers:
            if _DROP not in handler.filters:
                handler.addFilter(_DROP)
