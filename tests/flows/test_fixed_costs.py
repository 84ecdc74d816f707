"""Fixed costs are paid only by the verbs that need them: what a command imports (structural
checks in fresh subprocesses; the timings are in bench/fixed_costs.py, never here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
HEAVY = (
    "tensorflow",
    "tensorflow_probability",
    "tf_keras",
    "keras",
    "matplotlib",
    "uvicorn",
    "prefect",
)
FAST = [
    "train.epochs=1",
    "model.hidden_sizes=[32]",
    "model.latent_dim=2",
    "evaluate.num_samples=16",
]

# Runs `aevb ARGS...` in this fresh interpreter and prints, as the last stdout line, the exit code
# and which heavy modules were imported by then.
PROBE = """
import json, sys
from flows.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
heavy = {heavy!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith("prefect.server"))
print(json.dumps({{"rc": rc, "loaded": loaded}}))
"""


def _probe(args: list[str], env: dict[str, str]) -> tuple[dict, str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=900,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output (code {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1]), proc.stdout, proc.stderr


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        AEVB_DATA_ROOT=str(tmp_path / "data"),
        AEVB_MLFLOW_DIR=str(tmp_path / "mlflow"),
        AEVB_MODEL_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["pipeline", "--help"],
        ["datasets", "list"],
        ["models", "list"],
        ["config", "show"],
    ],
    ids=lambda a: " ".join(a),
)
def test_light_verbs_import_no_tensorflow_nor_prefect_and_start_no_server(args, tmp_path):
    result, out, err = _probe(args, _env(tmp_path))
    assert result["rc"] == 0, err[-3000:]
    assert result["loaded"] == [], f"`aevb {' '.join(args)}` imported {result['loaded']}"
    assert "aevb: TensorFlow" not in err  # the line TensorFlow's import prints


@pytest.fixture(scope="module")
def finished_pipeline(prefect_harness, tmp_path_factory):
    """One finished `aevb pipeline digits` (in this process, on the session's Prefect API)."""
    import contextlib
    import io

    from flows.cli import main

    tmp = tmp_path_factory.mktemp("noop")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["pipeline", "digits", "--data-root", str(tmp / "data"), *FAST])
    finally:
        if old is None:
            os.environ.pop("AEVB_MLFLOW_DIR", None)
        else:
            os.environ["AEVB_MLFLOW_DIR"] = old
    assert rc == 0
    return tmp


@pytest.mark.slow
def test_a_noop_rerun_decides_unchanged_without_importing_tensorflow(finished_pipeline):
    from prefect.settings import PREFECT_API_URL

    tmp = finished_pipeline
    env = _env(tmp, PREFECT_API_URL=PREFECT_API_URL.value())
    result, out, err = _probe(["pipeline", "digits", "--data-root", str(tmp / "data"), *FAST], env)
    assert result["rc"] == 0, err[-3000:]
    assert "SKIPPED" in out, out
    assert not [m for m in result["loaded"] if m.split(".")[0] != "prefect"], result
    # A changed setting is not a no-op: the same probe sees TensorFlow imported (the check bites).
    changed = [*FAST[:-1], "evaluate.num_samples=17"]
    result, out, err = _probe(
        ["pipeline", "digits", "--data-root", str(tmp / "data"), *changed], env
    )
    assert result["rc"] == 0, err[-3000:]
    assert "tensorflow" in result["loaded"] and "SKIPPED" not in out
    # TensorFlow came without Keras 3 (the CLI sets TF_USE_LEGACY_KERAS; nothing here uses Keras).
    assert not [m for m in result["loaded"] if m.split(".")[0] == "keras"], result["loaded"]


SERVER_PROBE = """
import json, os
from flows import prefect_api
from models.errors import PipelineError
from prefect.client.orchestration import get_client

out = {}
with prefect_api.serving(True) as server:
    out["url_set_at_once"] = os.environ["PREFECT_API_URL"] == server.url
    out["pending"] = prefect_api._Pending.server is server
    if os.environ.get("KILL_IT"):
        server.proc.kill(); server.proc.wait()
    try:
        with get_client(sync_client=True) as client:
            out["health"] = client.api_healthcheck() is None
    except PipelineError as exc:
        out["error"] = str(exc)
    out["waited"] = prefect_api._Pending.server is None
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["starts", "dies while starting"])
def test_the_temporary_server_starts_in_the_background_and_the_first_client_waits(kill, tmp_path):
    env = _env(
        tmp_path, PREFECT_HOME=str(tmp_path / "prefect"), **({"KILL_IT": "1"} if kill else {})
    )
    proc = subprocess.run(
        [sys.executable, "-c", SERVER_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["url_set_at_once"] and out["pending"]  # serving() did not wait for /health
    if kill:
        assert "temporary API server exited" in out["error"] and "health" not in out
    else:
        assert out["health"] and out["waited"]


# `entry` with a stand-in `main`: an atexit handler registered at start-up (as a sitecustomize or
# coverage registers one) and one during the command (as MLflow's and Prefect's are, on import), an
# idle thread pool nobody shut down, and an object whose finaliser runs only at teardown.
EXIT_PROBE = """
import atexit, concurrent.futures, sys
atexit.register(lambda: print("start-up atexit ran", flush=True))
from flows import cli

class Finalised:
    def __del__(self):
        print("teardown ran", flush=True)

cli.KEEP = Finalised()  # a module global: collected only by the interpreter's teardown

def main():
    atexit.register(lambda: print("library atexit ran", flush=True))
    concurrent.futures.ThreadPoolExecutor(2).submit(print, "pool ran", flush=True)
    print("unflushed output", end="")  # stdout is a pipe: block-buffered until the flush
    if sys.argv[1] == "raise":
        raise RuntimeError("internal error")
    return int(sys.argv[1])

cli.main = main
cli.entry()
"""


@pytest.mark.parametrize("how", ["0", "2", "raise"])
def test_entry_skips_the_teardown_after_the_atexit_handlers_and_keeps_the_exit_code(how):
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, how],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert "unflushed output" in out and "pool ran" in out, (out, proc.stderr)
    # Newest handler first, as Python's own exit runs them.
    assert out.index("library atexit ran") < out.index("start-up atexit ran"), out
    if how == "raise":  # main never returned: Python's own exit (traceback, code 1, teardown)
        assert proc.returncode == 1 and "RuntimeError: internal error" in proc.stderr
        assert "teardown ran" in out
    else:
        assert proc.returncode == int(how), proc.stderr
        assert "teardown ran" not in out, "the interpreter's teardown was not skipped"
