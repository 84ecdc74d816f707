"""A downstream job that knows nothing of aevb: load a registered model by alias and predict.

Run by tests/tasks/test_pyfunc_standalone.py as `python -I <copy of this file> ...` from a temp
folder. It first removes every trace of the project from the import system (the project folder
on sys.path, editable-install finders), proves `models`/`tasks`/`flows` cannot be imported, and
only then imports mlflow.

    argv: PROJECT_ROOT MODEL_URI INPUT.npy OUTPUT.npz
    env:  MLFLOW_TRACKING_URI
Writes z_mean, z_std, reconstruction (and the default output) to OUTPUT.npz; prints a JSON report.
"""

import importlib
import json
import os
import sys


def _strip_project(project_root: str) -> None:
    """Drop the project folder (not the venv inside it) and editable-install finders."""
    root = os.path.realpath(project_root)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root]
    sys.meta_path[:] = [
        f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
    ]


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def main() -> None:
    project_root, model_uri, input_path, output_path = sys.argv[1:5]
    _strip_project(project_root)
    leaked = [m for m in ("models", "tasks", "flows") if _importable(m)]
    if leaked:
        raise SystemExit(f"project packages importable in the consumer: {leaked}")

    import mlflow
    import numpy as np

    x = np.load(input_path)
    model = mlflow.pyfunc.load_model(model_uri)
    out = {
        "default": model.predict(x),
        **{
            o: model.predict(x, params={"output": o}) for o in ("z_mean", "z_std", "reconstruction")
        },
    }
    np.savez(output_path, **out)
    try:
        model.predict(x, params={"output": "nonsense"})
        bad_output_error = ""
    except Exception as exc:  # noqa: BLE001 - report whatever the model raises
        bad_output_error = str(exc)
    loaded = sorted(m.split(".")[0] for m in sys.modules)
    print(
        json.dumps(
            {
                "project_modules_loaded": [m for m in ("models", "tasks", "flows") if m in loaded],
                "bad_output_error": bad_output_error,
                "sys_path": sys.path,
            }
        )
    )


if __name__ == "__main__":
    main()
