"""Flows started from Python (a notebook) get the CLI's process set-up (flows/settings.py): the
temporary server's start-up timeout, telemetry off, and no tracebacks for user errors in
Prefect's log handlers. Each case runs in a fresh interpreter with a clean environment."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from flows.settings import ENV_DEFAULTS, DropPipelineErrorTracebacks
from models.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = """
import json, logging, sys
{first}
from flows.pipeline import pipeline_flow
from prefect.settings import get_current_settings
import os
s = get_current_settings()
handlers = [h for n in ["", "prefect", "prefect.flow_runs", "prefect.task_runs"]
            for h in logging.getLogger(n).handlers]
print(json.dumps({{
    "timeout": s.server.ephemeral.startup_timeout_seconds,
    "analytics": s.server.analytics_enabled,
    "env": {{k: os.environ.get(k) for k in {keys!r}}},
    "handlers": len(handlers),
    "filtered": sum(any(type(f).__name__ == "DropPipelineErrorTracebacks" for f in h.filters)
                    for h in handlers),
}}))
"""


def _probe(first: str = "", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_DEFAULTS}
    clean.update(PYTHONPATH=REPO, PREFECT_HOME=os.environ["PREFECT_HOME"], **env)
    code = PROBE.format(first=first, keys=list(ENV_DEFAULTS))
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first", ["", "import prefect  # a notebook that imported Prefect first"])
def test_flows_from_python_get_the_cli_start_up_timeout_and_logging(first):
    got = _probe(first)
    assert got["timeout"] == 90 and got["analytics"] is False
    assert got["env"] == ENV_DEFAULTS
    assert got["handlers"] >= 1 and got["filtered"] == got["handlers"]


def test_values_from_the_environment_win():
    got = _probe(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="150", TF_CPP_MIN_LOG_LEVEL="0")
    assert got["timeout"] == 150
    assert got["env"]["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert got["env"]["DO_NOT_TRACK"] == "true"


def test_the_filter_drops_only_user_error_tracebacks():
    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", (),
                                 (type(exc), exc, None))  # fmt: skip

    drop = DropPipelineErrorTracebacks()
    assert not drop.filter(record(ConfigError("train.epochs=0 must be > 0")))
    assert drop.filter(record(ValueError("a bug keeps its traceback")))
    assert drop.filter(logging.LogRecord("prefect", logging.INFO, __file__, 1, "hi", (), None))
