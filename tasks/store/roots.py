"""Where the stores live when nothing else is configured (the README's "Environment" table).

data root         explicit argument > $AEVB_DATA_ROOT > <repo>/data
checkpoints       $AEVB_CHECKPOINT_DIR > <data root>/checkpoints (local roots) or
                  ~/.cache/aevb/checkpoints (remote roots: TF checkpoints are local files)
MLflow store      $MLFLOW_TRACKING_URI > SQLite under $AEVB_MLFLOW_DIR > <repo>/mlflow
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.store import fs

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_DATA_ROOT = str(REPO_ROOT / "data")


def resolve_data_root(data_root: str | None) -> str:
    """Explicit argument > env ``AEVB_DATA_ROOT`` > ``<repo>/data``; local paths made absolute."""
    return fs.normalize(data_root or os.environ.get("AEVB_DATA_ROOT") or DEFAULT_DATA_ROOT)


def default_mlflow_dir() -> Path:
    return Path(os.environ.get("AEVB_MLFLOW_DIR", REPO_ROOT / "mlflow"))


def default_checkpoint_root(data_root: str) -> str:
    """Checkpoints are local TF files: beside a local data root, else in a local cache folder."""
    if "AEVB_CHECKPOINT_DIR" in os.environ:
        return fs.normalize(os.environ["AEVB_CHECKPOINT_DIR"])
    root = fs.normalize(data_root)
    if fs.is_local(root):
        return os.path.join(root, "checkpoints")
    return str(Path.home() / ".cache" / "aevb" / "checkpoints")
