"""Where the stores go with no settings: the checkout holding the current folder, else $AEVB_HOME
(default the user data folder), never the folder the code is installed in; every variable wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks import tracking
from tasks.store import roots

VARS = (
    "AEVB_HOME",
    "AEVB_DATA_ROOT",
    "AEVB_MLFLOW_DIR",
    "AEVB_CHECKPOINT_DIR",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "MLFLOW_TRACKING_URI",
)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def clean(monkeypatch, tmp_path):
    """No settings of ours, a fresh HOME, the current folder outside any checkout."""
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    return tmp_path


def _checkout(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "aevb-pipeline"\nversion = "0"\n')
    return folder


def test_outside_a_checkout_the_stores_go_to_the_user_data_folder(clean):
    home = clean / "home" / ".local" / "share" / "aevb"
    assert roots.store_base()[0] == home
    assert roots.resolve_data_root(None) == str(home / "data")
    assert roots.default_mlflow_dir() == home / "mlflow"
    assert roots.default_checkpoint_root(roots.resolve_data_root(None)) == str(
        home / "data" / "checkpoints"
    )
    assert tracking.tracking_uri() == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"


def test_xdg_data_home_moves_the_user_data_folder(clean, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(clean / "xdg"))
    assert roots.resolve_data_root(None) == str(clean / "xdg" / "aevb" / "data")


def test_inside_a_checkout_the_stores_are_its_data_and_mlflow_folders(clean, monkeypatch):
    checkout = _checkout(clean / "my-clone")
    (checkout / "tests" / "deep").mkdir(parents=True)
    for where in (checkout, checkout / "tests" / "deep"):  # from any folder inside it
        monkeypatch.chdir(where)
        assert roots.resolve_data_root(None) == str(checkout / "data")
        assert roots.default_mlflow_dir() == checkout / "mlflow"
    other = clean / "other-project"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    monkeypatch.chdir(other)  # another project's checkout is not ours
    assert roots.resolve_data_root(None) == str(clean / "home/.local/share/aevb/data")


def test_this_repository_is_recognised_as_a_checkout(clean, monkeypatch):
    monkeypatch.chdir(REPO / "tests")
    assert roots.find_checkout() == REPO
    assert roots.resolve_data_root(None) == str(REPO / "data")


def test_aevb_home_relocates_every_store_even_inside_a_checkout(clean, monkeypatch):
    monkeypatch.chdir(_checkout(clean / "clone"))
    monkeypatch.setenv("AEVB_HOME", str(clean / "team-home"))
    assert roots.resolve_data_root(None) == str(clean / "team-home" / "data")
    assert roots.default_mlflow_dir() == clean / "team-home" / "mlflow"


def test_each_variable_wins_over_the_base_and_arguments_win_over_variables(clean, monkeypatch):
    monkeypatch.setenv("AEVB_HOME", str(clean / "h"))
    monkeypatch.setenv("AEVB_DATA_ROOT", str(clean / "d"))
    monkeypatch.setenv("AEVB_MLFLOW_DIR", str(clean / "m"))
    monkeypatch.setenv("AEVB_CHECKPOINT_DIR", str(clean / "c"))
    assert roots.resolve_data_root(None) == str(clean / "d")
    assert roots.resolve_data_root(str(clean / "arg")) == str(clean / "arg")
    assert roots.default_mlflow_dir() == clean / "m"
    assert roots.default_checkpoint_root(str(clean / "d")) == str(clean / "c")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_remote_data_roots_keep_checkpoints_in_a_local_folder(clean, monkeypatch):
    cache = clean / "home" / ".cache" / "aevb" / "checkpoints"
    assert roots.default_checkpoint_root("s3://bucket/team") == str(cache)
    monkeypatch.setenv("AEVB_HOME", str(clean / "h"))
    assert roots.default_checkpoint_root("s3://bucket/team") == str(clean / "h" / "checkpoints")


def test_nothing_is_derived_from_where_the_code_is_installed(clean):
    """The installed-package case: the code's own folder never appears in a default."""
    code_dir = Path(roots.__file__).resolve().parents[2]
    for path in (roots.resolve_data_root(None), roots.default_mlflow_dir()):
        assert not str(path).startswith(str(code_dir) + os.sep)


def test_describe_names_every_location_and_what_decided_it(clean, monkeypatch):
    monkeypatch.setenv("AEVB_DATA_ROOT", str(clean / "d"))
    rows = {what: (where, why) for what, where, why in roots.describe()}
    assert set(rows) == {"base folder", "data root", "checkpoints", "MLflow store", "Prefect API"}
    assert rows["data root"] == (str(clean / "d"), "$AEVB_DATA_ROOT")
    assert rows["MLflow store"][0].endswith("aevb/mlflow/mlflow.db")
