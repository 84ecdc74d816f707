"""The MLflow adapter: the only module in the project that imports mlflow.

Everything goes through an `MlflowClient` with an explicit run id, because Prefect runs tasks in
threads and MLflow's fluent "active run" is per thread. Tracking URI: `MLFLOW_TRACKING_URI` if set,
else the embedded SQLite store `mlflow/mlflow.db` with artifacts in `mlflow/artifacts` (explicit
artifact location, so no stray ./mlruns ever appears).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.errors import ModelError
from tasks.paths import REPO_ROOT, default_mlflow_dir

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"
SAVED_MODEL_KEY = "saved_model"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    d = default_mlflow_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def _default_artifact_location(experiment_name: str) -> str | None:
    """Explicit artifact folder for SQLite stores (beside the .db file); a server decides its own."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    return (db.parent / "artifacts" / experiment_name).resolve().as_uri()


def client() -> MlflowClient:
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_default_artifact_location(name))
    except MlflowException:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def start_run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> str:
    tags = dict(tags or {})
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = client().create_run(experiment_id(experiment), run_name=run_name, tags=tags)
    return run.info.run_id


def run_exists(run_id: str) -> bool:
    try:
        client().get_run(run_id)
    except MlflowException:
        return False
    return True


def end_run(run_id: str, failed: bool = False) -> None:
    status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
    client().set_terminated(run_id, status=status)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(list(v)) if isinstance(v, (tuple, list)) else str(v)
    return out


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    flat = flatten(params)
    existing = client().get_run(run_id).data.params
    new = {
        k: v for k, v in flat.items() if k not in existing
    }  # params are immutable; resume re-logs
    if new:
        client().log_batch(run_id, params=[Param(k, v[:6000]) for k, v in new.items()])


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
    if batch:
        client().log_batch(run_id, metrics=batch)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def log_artifact(run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, local_path, artifact_path)


def log_dataset_input(
    run_id: str, name: str, version: str, source_uri: str, context: str = "train"
) -> None:
    """Lineage: the dataset version a run used, as an MLflow dataset input (digest = version)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with (
        warnings.catch_warnings()
    ):  # local paths match two equivalent source kinds; either is right
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(source_uri)
    ds = MetaDataset(source=source, name=name, digest=version[:36])
    tag = InputTag(key="mlflow.data.context", value=context)
    client().log_inputs(run_id, datasets=[DatasetInput(dataset=ds._to_mlflow_entity(), tags=[tag])])


def log_pyfunc_model(run_id: str, saved_model_dir: str, input_example: np.ndarray) -> str:
    """Log the SavedModel as a pyfunc *from code*; returns the logged model URI (models:/m-...)."""
    import tensorflow as tf
    from mlflow.models import infer_signature

    from models.saved import load_serving

    x = np.asarray(input_example, dtype=np.float32)
    z = load_serving(saved_model_dir).signatures["encode"](x=tf.constant(x))["z_mean"].numpy()
    signature = infer_signature(x, z, params={"output": "z_mean"})
    client()  # sets URIs for the fluent call below
    with mlflow.start_run(run_id=run_id):  # thread-local; started and ended in this thread
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_CODE),
            artifacts={SAVED_MODEL_KEY: saved_model_dir},
            signature=signature,
            input_example=x,
            pip_requirements=pip_requirements(),
        )
    return info.model_uri


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"mlflow=={version('mlflow')}",
        f"tensorflow=={version('tensorflow')}",
        f"tensorflow-probability=={version('tensorflow-probability')}",
        f"tf-keras=={version('tf-keras')}",
        f"numpy=={version('numpy')}",
        f"pandas=={version('pandas')}",
    ]


# -- registry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


def _to_version(mv) -> RegisteredVersion:
    return RegisteredVersion(
        mv.name,
        int(mv.version),
        mv.run_id,
        mv.source,
        dict(mv.tags or {}),
        tuple(getattr(mv, "aliases", ()) or ()),
    )


def register_model(
    model_uri: str, name: str, run_id: str, tags: Mapping[str, Any] | None = None
) -> RegisteredVersion:
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(
                name, description="AEVB model (aevb-pipeline): encoder/decoder pyfunc"
            )
        except MlflowException:
            pass  # created concurrently
    mv = c.create_model_version(
        name, model_uri, run_id=run_id, tags={k: str(v) for k, v in (tags or {}).items()}
    )
    return _to_version(c.get_model_version(name, mv.version))


def get_alias(name: str, alias: str) -> RegisteredVersion | None:
    try:
        return _to_version(client().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: int) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def set_version_tags(name: str, version: int, tags: Mapping[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(name, str(version), k, str(v))


def list_versions(name: str) -> list[RegisteredVersion]:
    vs = client().search_model_versions(f"name = '{name}'")
    return sorted((_to_version(v) for v in vs), key=lambda v: v.version)


def list_registered_models() -> list[str]:
    return sorted(m.name for m in client().search_registered_models())


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    name: str | None
    version: int | None
    run_id: str | None
    saved_model_dir: str


def resolve_model(uri: str, dst_dir: str | None = None) -> ResolvedModel:
    """Download a model (`models:/name@alias`, `models:/name/3`, `runs:/id/model`) to a local dir."""
    name = version = run_id = None
    c = client()
    try:
        if uri.startswith("models:/"):
            ref = uri[len("models:/") :]
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = c.get_model_version_by_alias(name, alias)
            elif "/" in ref:
                name, num = ref.split("/", 1)
                mv = c.get_model_version(name, num)
            else:
                mv = None
            if mv is not None:
                version, run_id = int(mv.version), mv.run_id
        elif uri.startswith("runs:/"):
            run_id = uri[len("runs:/") :].split("/", 1)[0]
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=dst_dir or tempfile.mkdtemp(prefix="aevb-model-")
        )
    except MlflowException as exc:
        raise ModelError(
            f"--model {uri}: cannot resolve it in the MLflow store at {tracking_uri()} "
            f"({str(exc).splitlines()[0]}); list models with `aevb models list`"
        ) from exc
    saved = os.path.join(local, "artifacts", SAVED_MODEL_KEY)
    if not os.path.isdir(saved):
        raise ModelError(
            f"--model {uri}: no artifacts/{SAVED_MODEL_KEY} in the downloaded model; "
            "it was not logged by aevb"
        )
    return ResolvedModel(uri, name, version, run_id, saved)
