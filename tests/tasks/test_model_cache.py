"""The managed model cache: one download per key, reused; bounded by least-recent use; entries in
use by a live process are never evicted; a killed download is swept (tasks/model_cache.py).

The "downloads" here write plain files (the cache does not care what a model is); the MLflow
round trip through `aevb export`/`evaluate` is in tests/tasks/test_leaks.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.errors import ConfigError
from tasks import model_cache

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AEVB_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AEVB_MODEL_CACHE_MB", "1")
    yield tmp_path / "cache"
    model_cache.release_all()


def _writer(size: int, calls: list[str]):
    def download(folder: str) -> None:
        calls.append(folder)
        Path(folder, "model.bin").write_bytes(b"\0" * size)

    return download


def _visible(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def test_a_key_is_downloaded_once_and_reused(cache):
    calls: list[str] = []
    first = model_cache.get("m-v1-abc", _writer(1000, calls))
    again = model_cache.get("m-v1-abc", _writer(1000, calls))
    assert first == again == str(cache / "m-v1-abc") and len(calls) == 1
    assert Path(first, "model.bin").stat().st_size == 1000
    assert not [p for p in cache.iterdir() if ".staging-" in p.name]


def test_least_recently_used_entries_go_when_the_bound_is_passed(cache):
    calls: list[str] = []
    for key in ("a", "b", "c"):  # 0.4 MB each under a 1 MB bound
        model_cache.get(key, _writer(400_000, calls))
        time.sleep(0.05)
    assert _visible(cache) == ["a", "b", "c"]  # all held by this process: none may go
    model_cache.release_all()
    assert _visible(cache) == ["b", "c"]  # 'a' was used least recently
    model_cache.get("b", _writer(400_000, calls))  # a hit (no download) makes 'b' the newest
    model_cache.release_all()
    model_cache.get("d", _writer(400_000, calls))
    model_cache.release_all()
    assert _visible(cache) == ["b", "d"] and len(calls) == 4


def test_a_zero_bound_keeps_nothing_after_the_command(cache, monkeypatch):
    monkeypatch.setenv("AEVB_MODEL_CACHE_MB", "0")
    path = model_cache.get("only", _writer(10, []))
    assert Path(path, "model.bin").is_file()  # kept while in use
    model_cache.release_all()
    assert _visible(cache) == []


_HOLDER = """
import sys, time
from pathlib import Path
from tasks import model_cache
model_cache.get("held", lambda d: Path(d, "model.bin").write_bytes(b"x" * 10))
print("holding", flush=True)
time.sleep(600)
"""


def test_an_entry_used_by_a_live_process_is_never_evicted(cache):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert model_cache.trim(0) == [] and _visible(cache) == ["held"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Its lock died with it (SIGKILL included): the entry is free to go.
    assert model_cache.trim(0) == [str(cache / "held")] and _visible(cache) == []


_KILLED = """
import os, signal
from pathlib import Path
from tasks import model_cache

def download(folder):
    Path(folder, "part.bin").write_bytes(b"x")
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-download

model_cache.get("k", download)
"""


def test_a_killed_download_is_swept_and_never_served(cache):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _KILLED], env=env, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in cache.iterdir() if ".k.staging-" in p.name], "no leftover to sweep"
    calls: list[str] = []
    model_cache.get("k", _writer(5, calls))
    assert len(calls) == 1  # downloaded again, not served half-done
    assert not [p for p in cache.iterdir() if ".staging-" in p.name]


@pytest.mark.parametrize("value", ["-1", "lots", "1.5", ""])
def test_a_bad_bound_is_a_config_error_naming_the_variable(value):
    with pytest.raises(ConfigError, match="AEVB_MODEL_CACHE_MB=.* must be an integer >= 0"):
        model_cache.limit_bytes({"AEVB_MODEL_CACHE_MB": value})


def test_the_default_location_follows_xdg_and_home():
    assert model_cache.cache_dir({"AEVB_MODEL_CACHE": "/srv/c"}) == "/srv/c"
    assert model_cache.cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/aevb/models"
    assert model_cache.cache_dir({}).endswith(os.path.join(".cache", "aevb", "models"))
    assert model_cache.limit_bytes({}) == model_cache.DEFAULT_LIMIT_MB * MB
