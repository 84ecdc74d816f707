"""`aevb serve` run the way operators run services, against a real `prefect server start` on
127.0.0.1 (slow): overlapping schedule ticks never start a second run (the deployment's 1-run
concurrency limit, cancel-new or enqueue), and SIGTERM / SIGINT stop the server cleanly: in-flight
run cancelled, schedule paused, no traceback, exit 0. Checked through the Prefect API and /proc.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.flows._prefect_server import (
    SLOW,
    aevb_command,
    children,
    deployment_runs,
    prefect_server,
    server_env,
    wait_for,
)

pytestmark = pytest.mark.slow
INTERVAL = 4  # seconds between schedule ticks; a run takes minutes
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(tmp) as url:
        yield url


def _serve(tmp, url: str, name: str, *extra: str) -> tuple[subprocess.Popen, object]:
    env = server_env(tmp, url, PREFECT_RUNNER_POLL_FREQUENCY="2")
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [*aevb_command(), "serve", "--interval", str(INTERVAL), "--name", name, "digits",
         *SLOW, *extra],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True,
    )  # fmt: skip
    return proc, log


def _types(runs) -> list[str]:
    return [r.state.type.value for r in runs]


def _watch_overlaps(proc, url: str, name: str, seconds: float) -> list:
    """Sample the serve process's children and the run states; at most one run, ever."""
    deadline, runs = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        engines = [c for c in children(proc.pid) if "python" in c[1]]
        assert len(engines) <= 1, engines
        _, runs = deployment_runs(url, name)
        assert _types(runs).count("RUNNING") + _types(runs).count("PENDING") <= 1, _types(runs)
        time.sleep(1)
    return runs


def _stop(proc, log, sig: int) -> str:
    engines = [pid for pid, _ in children(proc.pid)]
    proc.send_signal(sig)  # to the serve process only, as docker / Kubernetes do
    try:
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    name = signal.Signals(sig).name
    assert f"aevb serve: stopped ({name})" in out and out.count(f"{name} received") == 1
    assert engines and not [pid for pid in engines if _alive(pid)]  # no orphaned run process
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _running(url: str, name: str):
    return [r for r in deployment_runs(url, name)[1] if r.state.type.value == "RUNNING"]


def test_sigterm_cancels_the_run_pauses_the_schedule_and_overlaps_are_cancelled(server, tmp_path):
    proc, log = _serve(tmp_path, server, "sigterm-cancel-new")
    try:
        (running,) = wait_for(lambda: _running(server, "sigterm-cancel-new"), 300, "a run", log=log)
        runs = _watch_overlaps(proc, server, "sigterm-cancel-new", 5 * INTERVAL)
        deployment, _ = deployment_runs(server, "sigterm-cancel-new")
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert not deployment.paused
        # Ticks came due while the run went on, and each was cancelled without a process.
        refused = [
            r
            for r in runs
            if r.state.type.value == "CANCELLED" and "concurrency limit" in r.state.message
        ]
        assert len(refused) >= 2, [(r.state.name, r.state.message) for r in runs]
        assert [r.id for r in runs if r.state.type.value == "RUNNING"] == [running.id]
        _stop(proc, log, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    deployment, runs = deployment_runs(server, "sigterm-cancel-new")
    assert deployment.paused  # no Late runs pile up while nothing serves
    (after,) = [r for r in runs if r.id == running.id]
    assert after.state.type.value in ("CANCELLED", "CRASHED"), after.state
    assert not [t for t in _types(runs) if t in ("RUNNING", "PENDING", "CANCELLING")]
    # Serving again resumes the schedule (the deployment is registered unpaused).
    rerun = subprocess.run(
        [*aevb_command(), "serve", "--interval", str(INTERVAL), "--name", "sigterm-cancel-new",
         "--register-only", "digits", *SLOW],
        env=server_env(tmp_path, server), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not deployment_runs(server, "sigterm-cancel-new")[0].paused


def test_sigint_with_enqueue_keeps_later_runs_waiting_without_a_process(server, tmp_path):
    name = "sigint-enqueue"
    proc, log = _serve(tmp_path, server, name, "pipeline.schedule_collisions=enqueue")
    try:
        (running,) = wait_for(lambda: _running(server, name), 300, "a run", log=log)

        def waiting():
            runs = deployment_runs(server, name)[1]
            return [r for r in runs if r.state.name == "AwaitingConcurrencySlot"]

        wait_for(waiting, 60, "a run waiting for the concurrency slot", log=log)
        runs = _watch_overlaps(proc, server, name, 3 * INTERVAL)
        assert not [r for r in runs if r.state.type.value == "CANCELLED"]  # enqueued, not dropped
        assert deployment_runs(server, name)[0].concurrency_options.collision_strategy.value == (
            "ENQUEUE"
        )
        _stop(proc, log, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    deployment, runs = deployment_runs(server, name)
    assert deployment.paused
    (after,) = [r for r in runs if r.id == running.id]
    assert after.state.type.value in ("CANCELLED", "CRASHED"), after.state
    assert not [t for t in _types(runs) if t in ("RUNNING", "PENDING", "CANCELLING")]
