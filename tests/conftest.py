"""Session-wide test setup: offline env vars before any heavy import, temp stores, shared harnesses.

TensorFlow (~5 s) and the Prefect test harness (~15 s) are paid once per session. Under
pytest-xdist (`make test` runs 2 workers) each worker is its own session with its own temp stores,
Prefect home and harness, so workers share nothing but the machine.
"""

from __future__ import annotations

import os

# Before prefect/mlflow/tensorflow are imported anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# One Prefect home for the whole session, outside ~/.prefect, set before prefect is imported.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="aevb-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_TMP / "prefect-home" / "storage")
# Never touch the repo's own stores from tests.
os.environ["AEVB_DATA_ROOT"] = str(_SESSION_TMP / "data-default")
os.environ["AEVB_MLFLOW_DIR"] = str(_SESSION_TMP / "mlflow-default")
os.environ["AEVB_MODEL_CACHE"] = str(_SESSION_TMP / "model-cache")
os.environ.pop("MLFLOW_TRACKING_URI", None)

# Prefect binds its console log handler to whatever sys.stderr is when it first configures
# logging. Do that now (pytest's session-long capture), not inside a test using capsys, whose
# stream is closed after that test and would turn every later Prefect log line into a
# "--- Logging error ---" traceback on stderr.
import prefect.main  # noqa: E402, F401  (runs Prefect's setup_logging)


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the session (~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture()
def data_root(tmp_path: Path) -> str:
    root = tmp_path / "data"
    root.mkdir()
    return str(root)


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh embedded MLflow store (SQLite + artifacts) in a temp folder."""
    d = tmp_path / "mlflow"
    d.mkdir()
    monkeypatch.setenv("AEVB_MLFLOW_DIR", str(d))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return d
