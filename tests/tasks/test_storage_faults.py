"""Storage faults are user errors: read-only and full data roots, checkpoint folders and MLflow
stores give one line naming the path and the fix (exit 2), with nothing half-written; an unchanged
re-ingest writes nothing (so it works on a read-only root); a failed training leaves no empty
folder. Real file systems: a read-only bind mount (root) or a chmod (other users) and a small
tmpfs; skipped with the reason where this machine cannot make one."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import env, free_port

FAST = ["train.epochs=2", "train.jit_compile=false", "model.hidden_sizes=[16]"]


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    out = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    return out.returncode == 0


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` read-only for this process for the block: a read-only bind mount onto itself
    (root, whom permissions do not stop), else the write bits removed."""
    if os.geteuid() == 0:
        if not (_mount("--bind", str(path), str(path))):
            pytest.skip("cannot bind-mount here (needs mount privileges): no read-only folder")
        try:
            if not _mount("-o", "remount,bind,ro", str(path)):
                pytest.skip("cannot remount read-only here")
            yield
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.fixture()
def small_fs(tmp_path):
    """A 64 KiB tmpfs: big enough to start writing, too small to finish."""
    path = tmp_path / "small"
    path.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount privileges)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _cli(*argv: str) -> tuple[int, str, str]:
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _one_line_error(rc: int, err: str, verb: str, *needles: str) -> str:
    line = err.strip().splitlines()[-1] if err.strip() else ""
    assert rc == 2, err[-3000:]
    assert line.startswith(f"aevb {verb}: error: "), err[-3000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in line, line
    return line


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.rglob("*"))}


def test_new_data_on_a_read_only_root_fails_in_one_line(prefect_harness, tmp_path, mlflow_store):
    root = tmp_path / "data"
    assert _cli("ingest", "digits", "--data-root", str(root))[0] == 0
    before = _tree(root)
    with read_only(root):
        rc, _, err = _cli("ingest", "digits", "--data-root", str(root), "--split-seed", "1")
        line = _one_line_error(rc, err, "ingest", f"cannot write {root}/datasets/digits/")
        assert "read-only file system" in line or "not writable" in line
        assert "Fix:" in line and "--data-root" in line
    assert _tree(root) == before  # nothing half-written, CURRENT unchanged


def test_an_unchanged_reingest_writes_nothing_and_works_on_a_read_only_root(
    prefect_harness, tmp_path, mlflow_store
):
    from tasks.store import datasets

    root = tmp_path / "data"
    assert _cli("ingest", "digits", "--data-root", str(root))[0] == 0
    before = _tree(root)
    current = datasets.current_version(str(root), "digits")
    with read_only(root):
        rc, out, err = _cli("ingest", "digits", "--data-root", str(root))
        assert rc == 0, err[-3000:]
        assert "unchanged" in out
        assert datasets.set_current(str(root), "digits", current) is False
    assert _tree(root) == before


def test_ingest_into_a_full_file_system_leaves_nothing(prefect_harness, small_fs, mlflow_store):
    rc, _, err = _cli("ingest", "digits", "--data-root", str(small_fs))
    line = _one_line_error(rc, err, "ingest", "full file system", "No space left on device")
    assert f"cannot write {small_fs}/datasets/digits/" in line
    leftovers = [p for p in small_fs.rglob("*") if p.is_file()]
    assert leftovers == []  # no part files, manifest or CURRENT
    assert not [p for p in small_fs.rglob("*") if ".staging-" in p.name]


def _ingested(tmp_path) -> str:
    from tasks.ingest import ingest

    root = str(tmp_path / "data")
    ingest("digits", "digits", root)
    return root


def test_training_on_a_full_checkpoint_folder_fails_in_one_line_and_leaves_nothing(
    prefect_harness, tmp_path, small_fs, mlflow_store
):
    from tasks import tracking

    root = _ingested(tmp_path)
    with env(AEVB_CHECKPOINT_DIR=str(small_fs)):
        argv = ["train", "--dataset", "digits", "--data-root", root, *FAST]
        rc, _, err = _cli(*argv, "model.hidden_sizes=[256]")  # ~300 KB of weights: too big
    line = _one_line_error(rc, err, "train", "full file system", "AEVB_CHECKPOINT_DIR")
    assert str(small_fs) in line
    assert list(small_fs.iterdir()) == []  # no empty checkpoint folder left behind
    runs = tracking.client().search_runs([tracking.experiment_id("aevb-digits")])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "full file system" in runs[0].data.tags["aevb.failure"]


def test_a_read_only_checkpoint_folder_fails_in_one_line(prefect_harness, tmp_path, mlflow_store):
    root = _ingested(tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with env(AEVB_CHECKPOINT_DIR=str(ckpt)), read_only(ckpt):
        rc, _, err = _cli("train", "--dataset", "digits", "--data-root", root, *FAST)
        _one_line_error(rc, err, "train", f"cannot write {ckpt}/digits-", "AEVB_CHECKPOINT_DIR")
    assert list(ckpt.iterdir()) == []


def test_a_read_only_mlflow_store_fails_in_one_line_and_leaves_no_folder(
    prefect_harness, tmp_path, mlflow_store
):
    from tasks import tracking

    root = _ingested(tmp_path)
    tracking.experiment_id("aevb-digits")  # the store exists, then becomes read-only
    with read_only(mlflow_store):
        rc, _, err = _cli("train", "--dataset", "digits", "--data-root", root, *FAST)
        line = _one_line_error(rc, err, "train", f"MLflow store sqlite:///{mlflow_store}")
        assert "read-only" in line or "not writable" in line
        assert "MLFLOW_TRACKING_URI" in line
    assert not (Path(root) / "checkpoints").exists()


def test_a_tracking_outage_during_train_leaves_no_empty_checkpoint_folder(
    prefect_harness, tmp_path, mlflow_store
):
    root = _ingested(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with env(MLFLOW_TRACKING_URI=dead, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"):
        rc, _, err = _cli("train", "--dataset", "digits", "--data-root", root, *FAST)
    _one_line_error(rc, err, "train", dead, "unreachable")
    assert not (Path(root) / "checkpoints").exists()


def test_export_into_a_read_only_root_fails_in_one_line(prefect_harness, tmp_path, mlflow_store):
    from tasks import register, tracking
    from tests.tasks._mlflow_helpers import save_untrained_model, write_dataset

    root = tmp_path / "data"
    version = write_dataset(str(root), "faults")
    model = save_untrained_model(str(tmp_path / "model"))
    run_id = tracking.start_run("aevb-faults", "untrained")
    tracking.end_run(run_id)
    register.register(run_id, model, "faults", version, -10.0, data_root=str(root))
    before = _tree(root)
    with read_only(root):
        argv = ["export", "--model", "models:/aevb-faults@champion", "--dataset", "faults"]
        rc, _, err = _cli(*argv, "--data-root", str(root))
        _one_line_error(rc, err, "export", f"cannot write {root}/latents/faults/aevb-faults")
    assert _tree(root) == before


def test_a_finished_pipeline_reruns_on_a_read_only_root_and_writes_nothing(
    prefect_harness, tmp_path, mlflow_store
):
    root = tmp_path / "data"
    argv = ["pipeline", "digits", "--data-root", str(root), *FAST, "evaluate.num_samples=4"]
    argv += ["model.latent_dim=2", "export.splits=['test']"]
    rc, _, err = _cli(*argv)
    assert rc == 0, err[-3000:]
    before = _tree(root)
    with read_only(root):
        rc, out, err = _cli(*argv)
        assert rc == 0, err[-3000:]
        assert "SKIPPED" in out
    assert _tree(root) == before
