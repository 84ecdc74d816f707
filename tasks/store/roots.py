"""Where the stores live when nothing else is configured (the README's "Where data and stores go").

    base              $AEVB_HOME > the aevb-pipeline checkout that holds the current folder >
                      the user data folder (~/.local/share/aevb; $XDG_DATA_HOME/aevb when set;
                      ~/Library/Application Support/aevb on macOS; %LOCALAPPDATA%\\aevb on Windows)
    data root         explicit argument > $AEVB_DATA_ROOT > <base>/data
    checkpoints       $AEVB_CHECKPOINT_DIR > <data root>/checkpoints (local roots); for remote
                      roots (TF checkpoints are local files) $AEVB_HOME/checkpoints, else the
                      user cache folder (~/.cache/aevb/checkpoints; $XDG_CACHE_HOME/aevb/...)
    MLflow store      $MLFLOW_TRACKING_URI > SQLite under $AEVB_MLFLOW_DIR > <base>/mlflow

Nothing is derived from where the code is installed: an installed wheel never writes into
`site-packages`. Only `source_checkout()` (for the git commit a run records) looks at the code's
own location, and only to find an editable checkout.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from tasks.store import fs

PROJECT_NAME = "aevb-pipeline"
ENV_HOME = "AEVB_HOME"
ENV_DATA_ROOT = "AEVB_DATA_ROOT"
ENV_MLFLOW_DIR = "AEVB_MLFLOW_DIR"
ENV_CHECKPOINT_DIR = "AEVB_CHECKPOINT_DIR"


@lru_cache(maxsize=64)
def _is_checkout(folder: str) -> bool:
    """A folder whose pyproject.toml declares this project (the repository, or a copy of it)."""
    try:
        with open(os.path.join(folder, "pyproject.toml"), encoding="utf-8") as fh:
            text = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return f'name = "{PROJECT_NAME}"' in text


def find_checkout(start: str | os.PathLike | None = None) -> Path | None:
    """The aevb-pipeline checkout holding ``start`` (default: the current folder), else None."""
    try:
        here = Path(os.path.abspath(start if start is not None else os.getcwd()))
    except FileNotFoundError:  # the current folder was deleted
        return None
    for folder in (here, *here.parents):
        if _is_checkout(str(folder)):
            return folder
    return None


def source_checkout() -> Path | None:
    """The checkout this code runs from (an editable install), None for an installed wheel."""
    return find_checkout(Path(__file__).resolve().parent.parent.parent)


def user_data_dir() -> Path:
    """The per-user data folder of the platform, with an `aevb` folder inside it."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aevb"


def user_cache_dir() -> Path:
    """The per-user cache folder of the platform, with an `aevb` folder inside it."""
    if sys.platform == "win32":
        return user_data_dir() / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "aevb"
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "aevb"


def store_base() -> tuple[Path, str]:
    """(folder the default stores go under, why): $AEVB_HOME, the checkout, or the user folder."""
    if os.environ.get(ENV_HOME):
        return Path(os.path.abspath(os.path.expanduser(os.environ[ENV_HOME]))), f"${ENV_HOME}"
    checkout = find_checkout()
    if checkout is not None:
        return checkout, "the aevb-pipeline checkout holding the current folder"
    return user_data_dir(), f"${ENV_HOME} unset: the user data folder"


def default_data_root() -> str:
    return str(store_base()[0] / "data")


def resolve_data_root(data_root: str | None) -> str:
    """Explicit argument > env ``AEVB_DATA_ROOT`` > ``<base>/data``; local paths made absolute."""
    return fs.normalize(data_root or os.environ.get(ENV_DATA_ROOT) or default_data_root())


def default_mlflow_dir() -> Path:
    """The embedded MLflow store's folder: ``$AEVB_MLFLOW_DIR`` > ``<base>/mlflow``."""
    if os.environ.get(ENV_MLFLOW_DIR):
        return Path(os.path.abspath(os.path.expanduser(os.environ[ENV_MLFLOW_DIR])))
    return store_base()[0] / "mlflow"


def default_checkpoint_root(data_root: str) -> str:
    """Checkpoints are local TF files: beside a local data root, else in a local folder."""
    if os.environ.get(ENV_CHECKPOINT_DIR):
        return fs.normalize(os.environ[ENV_CHECKPOINT_DIR])
    root = fs.normalize(data_root)
    if fs.is_local(root):
        return os.path.join(root, "checkpoints")
    if os.environ.get(ENV_HOME):
        return str(store_base()[0] / "checkpoints")
    return str(user_cache_dir() / "checkpoints")


def describe() -> list[tuple[str, str, str]]:
    """(what, where, decided by) for every default location, as `aevb config show` prints them."""
    base, why = store_base()
    root = resolve_data_root(None)
    mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI")
    return [
        ("base folder", str(base), why),
        ("data root", root, f"${ENV_DATA_ROOT}" if os.environ.get(ENV_DATA_ROOT) else "base/data"),
        (
            "checkpoints",
            default_checkpoint_root(root),
            f"${ENV_CHECKPOINT_DIR}" if os.environ.get(ENV_CHECKPOINT_DIR) else "beside the data",
        ),
        (
            "MLflow store",
            mlflow_uri or f"sqlite:///{default_mlflow_dir() / 'mlflow.db'}",
            "$MLFLOW_TRACKING_URI"
            if mlflow_uri
            else (f"${ENV_MLFLOW_DIR}" if os.environ.get(ENV_MLFLOW_DIR) else "base/mlflow"),
        ),
        (
            "Prefect API",
            os.environ.get("PREFECT_API_URL") or "a temporary local server per command",
            "$PREFECT_API_URL" if os.environ.get("PREFECT_API_URL") else "PREFECT_API_URL unset",
        ),
    ]
