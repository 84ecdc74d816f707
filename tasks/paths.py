"""Where the embedded stores live when nothing else is configured (DESIGN.md, "Embedded defaults")."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_mlflow_dir() -> Path:
    return Path(os.environ.get("AEVB_MLFLOW_DIR", REPO_ROOT / "mlflow"))


def default_checkpoint_root(data_root: str) -> str:
    """Checkpoints are local TF files: beside a local data root, else in a local cache folder."""
    if "://" in data_root and not data_root.startswith("file://"):
        return str(
            Path(
                os.environ.get(
                    "AEVB_CHECKPOINT_DIR", Path.home() / ".cache" / "aevb" / "checkpoints"
                )
            )
        )
    local = data_root.removeprefix("file://")
    return os.environ.get("AEVB_CHECKPOINT_DIR", os.path.join(local, "checkpoints"))
