"""The retrain lock outlives no holder (tasks/locks.py): a holder record beside the one-slot Prefect
limit lets the next run free a dead holder's slot, and `aevb lock status|release` shows and frees
it by hand. Against the session's Prefect API, and (slow) a real `prefect server start` that is
restarted while a killed holder's slot is taken."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.errors import PipelineError
from tests.helpers import free_port, start_prefect_server, stop_group

REPO = Path(__file__).resolve().parents[2]

_HOLDER = """
import sys, time
from pathlib import Path
from tasks.locks import retrain_lock
model, ready, done = sys.argv[1:4]
with retrain_lock(model, 120):
    Path(ready).write_text("held")
    while not Path(done).exists():
        time.sleep(0.1)
Path(ready).write_text("released")
"""


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _start_holder(model: str, tmp: Path, api_url: str) -> tuple[subprocess.Popen, Path, Path]:
    """A separate process that takes the lock of ``model`` and keeps it until ``done`` exists."""
    ready, done = tmp / f"{model}.ready", tmp / f"{model}.done"
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, model, str(ready), str(done)],
        env=env,
        cwd=str(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (ready.exists() and ready.read_text() == "held"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"holder did not take the lock:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.1)
    return proc, ready, done


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _slots(model: str) -> int:
    from tasks import locks

    return locks.status(model)[0].active_slots


def test_the_holder_is_recorded_while_held_and_removed_on_release(prefect_harness):
    from tasks import locks

    with locks.retrain_lock("lock-record", 30):
        (st,) = locks.status("lock-record")
        assert (st.state, st.active_slots, st.limit) == ("held", 1, 1)
        assert st.holder.pid == os.getpid() and "heartbeat" in st.detail
    (st,) = locks.status("lock-record")
    assert (st.state, st.active_slots, st.holder) == ("free", 0, None)


def test_a_sigkilled_holders_slot_is_freed_by_the_next_run(prefect_harness, tmp_path):
    from flows.pipeline import model_lock
    from tasks import lock_slots as slots
    from tasks import locks

    proc, _, _ = _start_holder("lock-killed", tmp_path, _api_url())
    with pytest.raises(PipelineError, match=rf"held by pid {proc.pid} on"):
        with model_lock("lock-killed", 1):  # alive: the slot is not taken from it
            pytest.fail("took a live holder's slot")
    _kill(proc)
    (st,) = locks.status("lock-killed")
    assert st.state == "stale" and f"pid {proc.pid} on this host) is gone" in st.detail
    # Freed at the next check: long before the heartbeat/orphan timeouts (90 s) could matter.
    assert slots.HOLDER_TTL_SECONDS > 20 and slots.ORPHAN_SECONDS > 20
    with model_lock("lock-killed", 20):
        (st,) = locks.status("lock-killed")
        assert st.state == "held" and st.holder.pid == os.getpid()
    assert _slots("lock-killed") == 0


def test_a_silent_holder_on_another_host_is_freed_after_its_heartbeat_ttl(
    prefect_harness, monkeypatch
):
    from tasks import lock_slots as slots
    from tasks import locks

    with locks.retrain_lock("lock-remote", 30) as _:
        with slots.client() as client:  # make the record look like another host's
            me = slots.read_holder(client, "lock-remote")
            slots.write_holder(client, dataclasses.replace(me, host="elsewhere", pid=1))
        # The heartbeat thread now sees a record that is not its own and stops beating.
        monkeypatch.setattr(slots, "HOLDER_TTL_SECONDS", 3.0)
        monkeypatch.setattr(locks, "POLL_SECONDS", 0.5)
        with pytest.raises(PipelineError, match="held by pid 1 on elsewhere"):
            with locks.retrain_lock("lock-remote", 1.5):  # shorter than the TTL: still held
                pass
        with locks.retrain_lock("lock-remote", 30):  # the TTL passes: freed and taken
            (st,) = locks.status("lock-remote")
            assert st.holder.host != "elsewhere"
    assert _slots("lock-remote") == 0


def test_a_full_slot_without_a_holder_record_is_freed_after_the_orphan_time(
    prefect_harness, monkeypatch
):
    from tasks import lock_slots as slots
    from tasks import locks

    with slots.client() as client:  # a holder killed before writing its record
        slots.ensure_limit(client, "lock-orphan")
        assert slots.try_acquire(client, "lock-orphan")
    (st,) = locks.status("lock-orphan")
    assert st.state == "stale" and "no holder record" in st.detail
    monkeypatch.setattr(slots, "ORPHAN_SECONDS", 2.0)
    monkeypatch.setattr(locks, "POLL_SECONDS", 0.5)
    with locks.retrain_lock("lock-orphan", 30):
        assert _slots("lock-orphan") == 1
    assert _slots("lock-orphan") == 0


def test_a_holder_whose_flow_run_ended_is_dead(prefect_harness):
    from prefect import flow

    from tasks import lock_slots as slots
    from tasks import locks

    @flow
    def short() -> str:
        from prefect.runtime import flow_run

        return flow_run.id

    run_id = short()
    with locks.retrain_lock("lock-flowrun", 30):
        with slots.client() as client:
            me = slots.read_holder(client, "lock-flowrun")
            other = dataclasses.replace(me, host="elsewhere", pid=1, flow_run_id=run_id)
            slots.write_holder(client, other)
            assert "has ended" in slots.dead_reason(client, other)
        with locks.retrain_lock("lock-flowrun", 20):  # freed at once: no TTL to wait for
            pass


def test_lock_cli_status_and_release(prefect_harness, tmp_path, capsys):
    from flows.cli import main
    from tasks import locks

    proc, _, done = _start_holder("lock-cli", tmp_path, _api_url())
    try:
        assert main(["lock", "status", "lock-cli"]) == 0
        out = capsys.readouterr().out
        assert f"aevb-train-lock-cli  1/1  held by pid {proc.pid}" in out
        assert main(["lock", "release", "lock-cli"]) == 2  # alive: refused without --force
        err = capsys.readouterr().err.strip()
        assert err.startswith("aevb lock: error: retrain lock 'aevb-train-lock-cli' is held")
        assert "--force" in err and "\n" not in err
        _kill(proc)
        assert main(["lock", "status"]) == 0
        assert "aevb-train-lock-cli  1/1  stale: its process" in capsys.readouterr().out
        assert main(["lock", "release", "lock-cli"]) == 0
        assert "released (stale: its process" in capsys.readouterr().out
        assert _slots("lock-cli") == 0 and locks.status("lock-cli")[0].holder is None
        assert main(["lock", "release", "lock-cli"]) == 0
        assert "already free" in capsys.readouterr().out
        assert main(["lock", "release", "no-such-model"]) == 2
        assert "no retrain lock 'aevb-train-no-such-model'" in capsys.readouterr().err
    finally:
        done.write_text("done")
        if proc.poll() is None:
            proc.kill()


def test_force_release_of_a_live_holder_is_noticed_by_it(prefect_harness, tmp_path, capsys):
    from flows.cli import main
    from tasks import locks

    proc, ready, done = _start_holder("lock-force", tmp_path, _api_url())
    assert main(["lock", "release", "lock-force", "--force"]) == 0
    assert "released (held by" in capsys.readouterr().out
    with locks.retrain_lock("lock-force", 10):  # taken over; the old holder exits later...
        done.write_text("done")
        proc.wait(timeout=60)
        assert ready.read_text() == "released"
        assert _slots("lock-force") == 1  # ...without freeing the slot it no longer owns
    assert _slots("lock-force") == 0


def test_an_inactive_limit_is_refused_in_one_line(prefect_harness):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from flows.pipeline import model_lock
    from tasks import lock_slots as slots

    with slots.client() as client:
        slots.ensure_limit(client, "lock-off")
        update = GlobalConcurrencyLimitUpdate(active=False)
        client.update_global_concurrency_limit("aevb-train-lock-off", update)
    with pytest.raises(PipelineError, match=r"'aevb-train-lock-off' is inactive.*gcl enable"):
        with model_lock("lock-off", 5):
            pytest.fail("held a lock that guards nothing")


@pytest.mark.slow
def test_a_killed_holders_slot_is_freed_after_a_server_restart(tmp_path):
    """The case Prefect's in-memory leases lose: holder SIGKILLed, `prefect server start`
    restarted; the slot is still taken in the database, and the next run frees it. A live holder
    keeps its slot across a restart and frees it normally afterwards."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import model_lock
    from tasks import locks

    port, home, log = free_port(), str(tmp_path / "home"), str(tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}/api"
    server = start_prefect_server(home, port, log)
    try:
        killed, _, _ = _start_holder("lock-restart", tmp_path, url)
        alive, alive_ready, alive_done = _start_holder("lock-alive", tmp_path, url)
        _kill(killed)
        stop_group(server)
        server = start_prefect_server(home, port, log)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            assert _slots("lock-restart") == 1  # the restart did not free it
            with model_lock("lock-restart", 30):
                assert locks.status("lock-restart")[0].holder.pid == os.getpid()
            assert _slots("lock-restart") == 0
            with pytest.raises(PipelineError, match=f"held by pid {alive.pid}"):
                with model_lock("lock-alive", 3):
                    pass
            alive_done.write_text("done")
            alive.wait(timeout=60)
            assert alive_ready.read_text() == "released"
            assert _slots("lock-alive") == 0
    finally:
        for proc in (killed, alive):
            if proc.poll() is None:
                proc.kill()
        stop_group(server)
