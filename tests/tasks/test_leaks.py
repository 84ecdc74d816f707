"""No leaked copies: downloaded models live in the managed cache (reused, nothing in TMPDIR, also
on errors), and the staging leftovers of killed writers are swept by the next writer of the same
folder - datasets, latent tables and restored tables, on a local root and on S3."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from flows import cli
from tests.tasks.test_s3 import s3_root  # noqa: F401  (the moto S3 fixture)

REPO = Path(__file__).resolve().parents[2]
MODEL = "models:/aevb-digits@champion"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """digits (and a copy without a valid split) plus an untrained model registered as
    aevb-digits@champion in a fresh MLflow store."""
    from tasks import tracking
    from tasks.ingest import ingest
    from tests.tasks._mlflow_helpers import save_untrained_model

    tmp = tmp_path_factory.mktemp("leaks")
    root = str(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEVB_MLFLOW_DIR", str(tmp / "mlflow"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ingest("digits", "digits", root)
        ingest("digits", "novalid", root, valid_fraction=0)
        saved = save_untrained_model(tmp / "saved", feature_shape=(8, 8), latent_dim=2)
        run_id = tracking.start_run("aevb-digits", "leak-fixture")
        logged = tracking.log_pyfunc_model(run_id, saved, np.zeros((2, 64), np.float32))
        tracking.register_model(logged, "aevb-digits", run_id)
        tracking.set_alias("aevb-digits", "champion", 1)
        yield {"root": root, "mlflow": str(tmp / "mlflow"), "tmp": tmp, "run_id": run_id}


@pytest.fixture()
def private(registry, tmp_path, monkeypatch):
    """A fresh model cache and TMPDIR for one test."""
    monkeypatch.setenv("AEVB_MLFLOW_DIR", registry["mlflow"])
    monkeypatch.setenv("AEVB_MODEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tmpdir").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmpdir"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmpdir"))
    return {"cache": tmp_path / "cache", "tmpdir": tmp_path / "tmpdir"}


def _entries(cache: Path) -> dict[str, int]:
    """Visible cache entries -> inode (a new download would be a new folder)."""
    if not cache.is_dir():
        return {}
    return {p.name: p.stat().st_ino for p in cache.iterdir() if not p.name.startswith(".")}


def test_commands_share_one_cached_copy_and_leave_nothing_in_tmpdir(
    prefect_harness, registry, private, capsys
):
    root = registry["root"]
    export = ["export", "--model", MODEL, "--dataset", "digits", "--data-root", root]
    assert cli.main([*export, "--splits", "test"]) == 0
    first = _entries(private["cache"])
    assert len(first) == 1 and next(iter(first)).startswith("aevb-digits-v1-")
    evaluate = ["evaluate", "--model", MODEL, "--dataset", "digits", "--data-root", root, "-k", "4"]
    assert cli.main(evaluate) == 0
    assert cli.main([*export, "--splits", "valid"]) == 0
    assert _entries(private["cache"]) == first  # reused, never downloaded again
    assert _tmp_files(private["tmpdir"]) == []  # no aevb-model-* (nor anything else)
    capsys.readouterr()


def _tmp_files(tmpdir: Path) -> list[str]:
    """What is in TMPDIR, except TF's autograph sources: TF removes those when the process exits
    (the subprocess test below sees an empty TMPDIR after the command)."""
    return [p.name for p in tmpdir.iterdir() if not p.name.startswith("__autograph_generated")]


@pytest.mark.slow
def test_tmpdir_is_empty_after_the_processes_exit(registry, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(TMPDIR=str(tmpdir), AEVB_MLFLOW_DIR=registry["mlflow"], PYTHONPATH=str(REPO),
               AEVB_MODEL_CACHE=str(tmp_path / "cache"))  # fmt: skip
    common = ["--model", MODEL, "--dataset", "digits", "--data-root", registry["root"]]
    for argv in (["export", *common, "--splits", "test"], ["evaluate", *common, "-k", "2"]):
        proc = subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(tmpdir.iterdir()) == []
    assert len(_entries(tmp_path / "cache")) == 1


def test_run_and_version_uris_resolve_through_the_cache(registry, private):
    from models.saved import read_config
    from tasks.tracking import resolve_model

    by_run = resolve_model(f"runs:/{registry['run_id']}/model")
    by_version = resolve_model("models:/aevb-digits/1")
    for resolved in (by_run, by_version):
        assert read_config(resolved.saved_model_dir)[0].latent_dim == 2
        assert resolved.saved_model_dir.startswith(str(private["cache"]))
    assert by_run.run_id == by_version.run_id == registry["run_id"] and by_version.version == 1
    assert sorted(n.split("-")[0] for n in _entries(private["cache"])) == ["aevb", "run"]
    assert (
        resolve_model("models:/aevb-digits@champion").saved_model_dir == by_version.saved_model_dir
    )


def test_an_error_found_before_the_download_downloads_nothing(registry, private, capsys):
    argv = ["evaluate", "--model", MODEL, "--dataset", "novalid", "--split", "valid",
            "--data-root", registry["root"]]  # fmt: skip
    assert cli.main(argv) == 2
    assert "has no valid rows" in capsys.readouterr().err
    assert _entries(private["cache"]) == {} and list(private["tmpdir"].iterdir()) == []


def test_a_zero_bound_removes_the_copy_when_the_command_ends(
    prefect_harness, registry, private, monkeypatch, capsys
):
    monkeypatch.setenv("AEVB_MODEL_CACHE_MB", "0")
    argv = ["export", "--model", MODEL, "--dataset", "digits", "--data-root", registry["root"],
            "--splits", "test", "--samples", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    assert _entries(private["cache"]) == {} and _tmp_files(private["tmpdir"]) == []
    capsys.readouterr()


# ----------------------------------------------------------------------------- staging sweeps


def _killed(code: str, point: str, **env: str) -> None:
    """Run ``code`` in a subprocess that SIGKILLs itself at fault point ``point``."""
    full = {**os.environ, "AEVB_TEST_KILL_AT": point, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full, timeout=600,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _stages(folder: str) -> list[str]:
    from tasks.store import fs

    return [name for name, _ in fs.entries(folder) if ".staging-" in name]


@pytest.mark.slow
def test_a_killed_ingest_is_swept_by_the_next_ingest(tmp_path):
    from tasks.ingest import ingest

    root = str(tmp_path / "data")
    ingest("digits", "d", root)
    _killed(f"from tasks.ingest import ingest; ingest('digits', 'd', {root!r}, split_seed=1)",
            "after_part")  # fmt: skip
    base = os.path.join(root, "datasets", "d")
    assert _stages(base), "the kill left no stage behind"
    assert not ingest("digits", "d", root).created  # a no-op for the data, but a writer
    assert _stages(base) == []


@pytest.mark.slow
def _forget_table(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(f"{folder}.manifest.json")


def test_killed_exports_and_restores_are_swept_by_the_next_one(registry, monkeypatch):
    from tasks.corrupt import corrupt_dataset
    from tasks.export import export_latents
    from tasks.restore import restore_dataset
    from tasks.store import tables

    monkeypatch.setenv("AEVB_MLFLOW_DIR", registry["mlflow"])
    root = registry["root"]
    env = {"AEVB_MLFLOW_DIR": registry["mlflow"]}
    latents = tables.latent_table_path(root, "digits", "aevb-digits", 1)
    _forget_table(latents)  # another test's same export would make this one a no-op, never killed
    _killed(f"from tasks.export import export_latents; export_latents({MODEL!r}, 'digits', "
            f"{root!r}, splits=('test',))", "table_before_publish", **env)  # fmt: skip
    assert _stages(os.path.dirname(latents))
    export_latents(MODEL, "digits", root, splits=("test",))
    assert _stages(os.path.dirname(latents)) == []

    corrupt_dataset("digits", "denoise", data_root=root)
    call = (
        f"restore_dataset({MODEL!r}, 'digits-denoise', 'amortized', {root!r}, log_to_mlflow=False)"
    )
    restored = tables.restored_table_path(root, "digits-denoise", "aevb-digits", 1, "amortized")
    _forget_table(restored)
    _killed(f"from tasks.restore import restore_dataset; {call}", "table_before_publish", **env)
    assert _stages(os.path.dirname(restored))
    restore_dataset(MODEL, "digits-denoise", "amortized", root, log_to_mlflow=False)
    assert _stages(os.path.dirname(restored)) == []


@pytest.mark.slow
def test_a_killed_ingest_on_s3_is_swept_by_the_next_ingest(s3_root):  # noqa: F811
    from tasks.ingest import ingest
    from tasks.store import fs

    root = f"{s3_root}/sweep"
    ingest("digits", "d", root)
    _killed(f"from tasks.ingest import ingest; ingest('digits', 'd', {root!r}, split_seed=1)",
            "after_part")  # fmt: skip
    base = fs.join(root, "datasets", "d")
    assert _stages(base), "the kill left no stage behind"
    assert not ingest("digits", "d", root).created
    assert _stages(base) == []
