"""Progress lines of long stages: at most one per interval, always the last, never twice."""

from __future__ import annotations

import logging
import threading

from tasks.logs import ProgressLogger, progress_seconds


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("job:")]


def test_a_long_interval_logs_only_the_final_line_once(caplog):
    with caplog.at_level(logging.INFO):
        p = ProgressLogger(100, "job", every_seconds=3600, artifact=False)
        for done in (10, 50, 99, 100, 100):
            p(done)
    lines = _lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("job: 100/100 rows (100%)")


def test_a_zero_interval_logs_every_call_with_rate_and_eta(caplog):
    with caplog.at_level(logging.INFO):
        p = ProgressLogger(30, "job", every_seconds=0, artifact=False)
        for _ in range(3):
            p.add(10)
    lines = _lines(caplog)
    assert [ln.split(" rows")[0] for ln in lines] == ["job: 10/30", "job: 20/30", "job: 30/30"]
    assert all("rows/s" in ln and "ETA" in ln for ln in lines)
    assert lines[-1].endswith("ETA 0 s")


def test_threads_sharing_one_logger_count_every_row(caplog):
    with caplog.at_level(logging.INFO):
        p = ProgressLogger(4000, "job", every_seconds=3600, artifact=False)
        workers = [
            threading.Thread(target=lambda: [p.add(1) for _ in range(1000)]) for _ in range(4)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    lines = _lines(caplog)
    assert p.done == 4000 and len(lines) == 1 and lines[0].startswith("job: 4000/4000 rows (100%)")


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("AEVB_PROGRESS_SECONDS", "2.5")
    assert progress_seconds() == 2.5 and ProgressLogger(1, "x", artifact=False).every_seconds == 2.5
    monkeypatch.setenv("AEVB_PROGRESS_SECONDS", "soon")
    assert progress_seconds() == 10.0


def test_links_to_the_commands_own_temporary_server_are_not_printed(monkeypatch):
    """The CLI's temporary Prefect server dies with the command: no dead UI links for it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.summary import _prefect_ui
    from tasks.logs import TEMPORARY_API_ENV, is_temporary_api

    url = "http://127.0.0.1:45679/api"
    monkeypatch.delenv(TEMPORARY_API_ENV, raising=False)
    with temporary_settings({PREFECT_API_URL: url}):
        assert not is_temporary_api(url)
        assert _prefect_ui() == "http://127.0.0.1:45679/artifacts"  # a server the user runs
        monkeypatch.setenv(TEMPORARY_API_ENV, url + "/")
        assert is_temporary_api(url)
        assert _prefect_ui() == ""
    assert not is_temporary_api("http://127.0.0.1:4200/api")
