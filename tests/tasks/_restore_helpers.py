"""One small digits model, trained, evaluated and registered once per test session, shared by the
restoration tests (tests/tasks/test_restore.py, tests/flows/test_restore_cli.py).

`registered_digits_model(tmp_path_factory)` returns {"root", "mlflow_dir", "uri", "saved",
"version", "run_id", "dataset_version"}; `use_store(info)` points AEVB_MLFLOW_DIR at its MLflow
store for a test module and puts the previous value back afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

LATENT_DIM = 8
EPOCHS = 25
_CACHE: dict[str, Any] = {}


@contextlib.contextmanager
def use_store(info: dict[str, Any]) -> Iterator[dict[str, Any]]:
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = info["mlflow_dir"]
    try:
        yield info
    finally:
        if old is None:
            os.environ.pop("AEVB_MLFLOW_DIR", None)
        else:
            os.environ["AEVB_MLFLOW_DIR"] = old


def registered_digits_model(tmp_path_factory: Any) -> dict[str, Any]:
    """digits ingested, a model trained for a few seconds, registered as aevb-digits@champion."""
    if "info" in _CACHE:
        return _CACHE["info"]
    from models.config import ModelConfig, TrainConfig
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest
    from tasks.register import register
    from tasks.train import train

    tmp = tmp_path_factory.mktemp("restore-model")
    info = {"root": str(tmp / "data"), "mlflow_dir": str(tmp / "mlflow")}
    with use_store(info):
        ds = ingest("digits", "digits", info["root"])
        model = ModelConfig(latent_dim=LATENT_DIM, hidden_sizes=(128,))
        train_cfg = TrainConfig(epochs=EPOCHS, batch_size=100, learning_rate=3e-3, patience=0)
        out = train("digits", model, train_cfg, info["root"])
        ev = evaluate(out.saved_model_dir, "digits", None, info["root"], num_samples=8,
                      run_id=out.run_id)  # fmt: skip
        reg = register(
            out.run_id, out.saved_model_dir, "digits", ds.version, ev.log_marginal_likelihood,
            data_root=info["root"], eval_num_samples=8,
        )  # fmt: skip
    info.update(uri=f"models:/{reg.name}@champion", saved=out.saved_model_dir,
                version=reg.version, run_id=out.run_id, dataset_version=ds.version)  # fmt: skip
    _CACHE["info"] = info
    return info
