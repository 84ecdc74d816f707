"""The Prefect ingest task: re-ingesting identical content is a cache hit; CURRENT stays right."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from prefect import flow

from flows.stages import run_ingest_task
from tasks.ingest import ingest_task
from tasks.store import datasets as ds


@flow
def _ingest_twice(source: str, name: str, root: str) -> list:
    return [
        ingest_task(source, name, root, return_state=True, valid_fraction=0, test_fraction=0)
        for _ in range(2)
    ]


@flow
def _ingest_flow(source: str, name: str, root: str):
    return run_ingest_task(ingest_task, source, name, root, valid_fraction=0, test_fraction=0)[0]


def _npz(path, seed: int) -> str:
    np.savez(path, x=np.random.default_rng(seed).integers(0, 256, (20, 3), dtype=np.uint8))
    return str(path)


def test_identical_content_is_a_cache_hit(prefect_harness, tmp_path) -> None:
    src = _npz(tmp_path / "a.npz", 0)
    first, second = _ingest_twice(src, "a", str(tmp_path / "root"))
    assert first.name == "Completed" and first.result().created
    assert second.name == "Cached"
    assert second.result().version == first.result().version
    result = _ingest_flow(src, "a", str(tmp_path / "root"))
    assert not result.created  # run_ingest_task reports a cache hit as "nothing written"


def test_changed_content_and_switching_back_move_current(prefect_harness, tmp_path) -> None:
    root = str(tmp_path / "root")
    a, b = _npz(tmp_path / "a.npz", 0), _npz(tmp_path / "b.npz", 1)
    ra = _ingest_flow(a, "d", root)
    shutil.copy(b, a)  # same path, new content: a new version
    rb = _ingest_flow(a, "d", root)
    assert rb.created and rb.version != ra.version
    assert ds.current_version(root, "d") == rb.version
    shutil.copy(_npz(tmp_path / "a2.npz", 0), a)  # back to the first content
    again = _ingest_flow(a, "d", root)
    assert again.version == ra.version and not again.created
    assert ds.current_version(root, "d") == ra.version  # not a stale cache hit
    assert sorted(ds.list_versions(root, "d")) == sorted([ra.version, rb.version])


def test_deleted_dataset_is_rebuilt_not_served_from_cache(prefect_harness, tmp_path) -> None:
    root = tmp_path / "root"
    src = _npz(tmp_path / "a.npz", 3)
    first = _ingest_flow(src, "gone", str(root))
    shutil.rmtree(root)
    rebuilt = _ingest_flow(src, "gone", str(root))
    assert rebuilt.created and rebuilt.version == first.version
    assert ds.load_manifest(str(root), "gone").rows["train"] == 20


@pytest.mark.slow
def test_works_in_prefects_ephemeral_mode_without_a_server(tmp_path) -> None:
    """A fresh process with no PREFECT_API_URL: the flow starts its own temporary API."""
    script = textwrap.dedent(
        f"""
        from prefect import flow
        from tasks.ingest import ingest_task

        @flow
        def twice():
            return [ingest_task("digits", "digits", {str(tmp_path / "root")!r}, return_state=True)
                    for _ in range(2)]

        states = twice()
        print("STATES", states[0].name, states[1].name, states[1].result().version)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("STATES"))
    _, s1, s2, version = line.split()
    assert (s1, s2) == ("Completed", "Cached")
    assert version == ds.current_version(str(tmp_path / "root"), "digits")
