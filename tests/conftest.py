"""Session-wide test setup: offline env vars before any heavy import, temp stores, shared harnesses.

TensorFlow (~5 s) and the Prefect test harness (~15 s) are paid once per session.
"""

from __future__ import annotations

import os

# Before prefect/mlflow/tensorflow are imported anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
