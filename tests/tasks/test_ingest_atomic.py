"""A SIGKILLed ingest leaves no visible partial dataset and the previous CURRENT intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tasks.ingest import ingest
from tasks.store import datasets as ds
from tasks.store import readers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _npz(path, seed: int, rows: int = 300, dim: int = 16) -> str:
    np.savez(path, x=np.random.default_rng(seed).integers(0, 256, (rows, dim), dtype=np.uint8))
    return str(path)


def _ingest_cmd(src: str, root: str) -> list[str]:
    code = f"from tasks.ingest import ingest; ingest({src!r}, 'd', {root!r})"
    return [sys.executable, "-c", code]


def _assert_only_complete_versions(root: str, expected_current: str) -> None:
    base = os.path.join(root, "datasets", "d")
    assert ds.current_version(root, "d") == expected_current
    for entry in os.listdir(base):
        full = os.path.join(base, entry)
        if os.path.isdir(full) and not entry.startswith("."):
            assert os.path.exists(f"{full}.manifest.json"), f"partial version {entry} visible"
    manifest = ds.load_manifest(root, "d")
    ids, x, _ = readers.read_split(root, "d", None, "train")
    assert manifest.version == expected_current and len(ids) == manifest.rows["train"]
    assert [m.name for m in ds.list_datasets(root)] == ["d"]


@pytest.fixture()
def with_first_version(tmp_path) -> tuple[str, str, str]:
    root = str(tmp_path / "root")
    first = ingest(_npz(tmp_path / "a.npz", 0), "d", root)
    return root, first.version, _npz(tmp_path / "b.npz", 1)


@pytest.mark.parametrize("point", ["after_part", "before_publish", "before_current"])
def test_sigkill_at_each_stage_keeps_previous_current(with_first_version, point: str) -> None:
    root, first, new_src = with_first_version
    env = {**os.environ, "AEVB_TEST_KILL_AT": point}
    proc = subprocess.run(
        _ingest_cmd(new_src, root), env=env, cwd=REPO, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-1000:]
    _assert_only_complete_versions(root, first)
    versions = ds.list_versions(root, "d")
    # Killed before the rename: the new version is not there at all; after it, it is complete.
    assert len(versions) == (2 if point == "before_current" else 1)
    # A rerun completes and moves CURRENT.
    again = ingest(new_src, "d", root)
    assert ds.current_version(root, "d") == again.version != first
    assert again.created == (point != "before_current")


def test_sigkill_at_an_arbitrary_moment(tmp_path) -> None:
    """Kill as soon as the staging folder appears (a real race, no hook)."""
    root = str(tmp_path / "root")
    first = ingest(_npz(tmp_path / "a.npz", 0), "d", root).version
    big = _npz(tmp_path / "big.npz", 2, rows=40_000, dim=784)
    proc = subprocess.Popen(_ingest_cmd(big, root), cwd=REPO, stderr=subprocess.DEVNULL)
    base = os.path.join(root, "datasets", "d")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(".staging-" in e for e in os.listdir(base)):  # .incoming.staging-<owner>
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.returncode == 0:
        pytest.skip("the ingest finished before it could be killed")
    _assert_only_complete_versions(root, first)


def test_staging_left_by_a_dead_writer_is_swept_and_a_live_one_is_kept(tmp_path) -> None:
    """Ownership, not age: a stage named for a process that is gone is removed by the next
    writer of the dataset at once; a stage of a running process (however old) is kept."""
    from tasks.store import publish

    root = str(tmp_path / "root")
    ingest(_npz(tmp_path / "a.npz", 0), "d", root)
    base = os.path.join(root, "datasets", "d")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    host = publish.owner_token().split(".")[0]
    stale = os.path.join(base, f".incoming.staging-{host}.{dead}.0.deadbeef")
    live = os.path.join(base, f".incoming.staging-{publish.owner_token()}")
    for folder in (stale, live):
        os.makedirs(os.path.join(folder, "split=train"))
    os.utime(live, (time.time() - 7 * 3600,) * 2)  # old, but its writer (this process) lives
    ingest(_npz(tmp_path / "b.npz", 1), "d", root)
    assert not os.path.exists(stale) and os.path.exists(live)
