"""A quiet, honest start: the installed `aevb` command, run as a user runs it, writes only our own
lines to stderr - no TensorFlow/absl/CUDA start-up lines, no MLflow INFO or warnings, no Prefect
engine chatter - and one line of ours says which device TensorFlow uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

AEVB = os.path.join(os.path.dirname(sys.executable), "aevb")
# Our lines: Prefect-formatted records logged by our stages (flows/, tasks/), or our own prints.
PREFECT_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3} \| (INFO|WARNING) +\| (Flow run|Task run) '[^']+' - (?P<msg>.*)$"
)
OUR_MESSAGES = re.compile(
    r"^(\[[1-5]/5\] |aevb: TensorFlow \S+ on (CPU|GPU) |epoch \d+/\d+ |evaluate\[is\] |export[: ]"
    r"|register: |train: )"
)
FAST = [
    "train.epochs=1",
    "model.hidden_sizes=[16]",
    "model.latent_dim=2",
    "evaluate.num_samples=8",
    "export.splits=['test']",
]


def _user_env(tmp_path) -> dict[str, str]:
    """A user's environment: none of the test session's quieting switches, fresh stores."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AEVB_", "TF_", "MLFLOW_", "PREFECT_", "PYTHONWARNINGS"))
    }
    env.update(AEVB_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect-home"))
    return env


def _foreign(stderr: str) -> list[str]:
    bad = []
    for line in stderr.splitlines():
        m = PREFECT_LINE.match(line)
        msg = m["msg"] if m else line
        if not OUR_MESSAGES.match(msg):
            bad.append(line)
    return bad


def test_help_writes_nothing_to_stderr(tmp_path):
    out = subprocess.run(
        [AEVB, "--help"],
        capture_output=True,
        text=True,
        env=_user_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0 and out.stderr == "" and "usage: aevb" in out.stdout


@pytest.mark.slow
def test_a_pipeline_run_writes_only_our_own_lines_to_stderr(tmp_path):
    out = subprocess.run(
        [AEVB, "pipeline", "digits", *FAST],
        capture_output=True,
        text=True,
        env=_user_env(tmp_path),
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert _foreign(out.stderr) == [], "\n".join(_foreign(out.stderr))
    devices = [ln for ln in out.stderr.splitlines() if "aevb: TensorFlow" in ln]
    assert len(devices) == 1, devices  # said once, by us
    assert re.search(r"aevb: TensorFlow \S+ on (CPU \(\d+ cores; .+\)|GPU \(.+\))$", devices[0])
    assert "[5/5] export" in out.stderr  # our progress lines are kept
    assert "aevb pipeline finished" in out.stdout


def test_the_filter_recognises_what_it_must_drop():
    """The noise this machine's TensorFlow, MLflow and Prefect print, as seen before the fix."""
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796119796.106202     941 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.",
        "2026/12/01 10:10:03 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "10:09:55.507 | INFO    | Task run 'ingest-02f' - Finished in state Completed()",
        "10:09:34.163 | INFO    | prefect - Starting temporary server on http://127.0.0.1:8159",
    ]
    assert _foreign("\n".join(noise)) == noise
    from flows import cli

    assert all(cli._TF_STARTUP_NOISE.search(line) for line in noise[:2])


@pytest.mark.slow
def test_a_user_error_inside_a_flow_is_one_line_without_a_traceback(tmp_path):
    out = subprocess.run(
        [AEVB, "export", "--model", "models:/nosuch@champion", "--dataset", "nosuch"],
        capture_output=True,
        text=True,
        env=_user_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("aevb export: error:")]
    assert len(errors) == 1 and "nosuch" in errors[0]
