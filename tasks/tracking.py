"""The MLflow adapter: the only module in the project that imports mlflow.

Everything goes through an `MlflowClient` with an explicit run id, because Prefect runs tasks in
threads and MLflow's fluent "active run" is per thread. Tracking URI: `MLFLOW_TRACKING_URI` if set,
else the embedded SQLite store `mlflow/mlflow.db` with artifacts in `mlflow/artifacts` (explicit
artifact location, so no stray ./mlruns ever appears).

Failure behaviour: HTTP calls to a tracking server are retried by MLflow itself on connection errors
and 429/5xx answers, bounded by the MLFLOW_HTTP_REQUEST_* variables (defaults below: 3 retries,
~6 s of backoff, 30 s per attempt; set them to change it). When that gives up, every public function
here raises one `TrackingError` naming the URI and the fix. Other errors (4xx: a bad request, a
missing run) are not retried and keep MLflow's message.

`registry_lock` is a mutex for the champion/challenger gate that works on any backend: it is a
registered model named `<name>.gate-lock`, whose creation is atomic in the registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.errors import ModelError, StorageError, TrackingError
from tasks.store import fs
from tasks.store.roots import default_mlflow_dir, source_checkout

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"
SAVED_MODEL_KEY = "saved_model"
PLOTS_ARTIFACT = "plots"
LOCK_SUFFIX = ".gate-lock"
MODEL_ROOT_FILE = ".model-root"  # in a downloaded model's folder: where its MLmodel file sits
# MLflow logs a traceback for every database error before raising it; the error itself reaches the
# user (a storage fault as one line, `store_fault`), so that log line is noise.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# Bounded retries for a tracking server (MLflow's defaults wait ~4 minutes before giving up).
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if the user set it, else SQLite under AEVB_MLFLOW_DIR (mlflow/)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    d = default_mlflow_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def _default_artifact_location(experiment_name: str) -> str | None:
    """Explicit artifact folder for database stores; a tracking server decides its own.

    SQLite: `artifacts/` beside the .db file. Other databases (postgresql://, mysql://): the
    embedded folder `mlflow/artifacts` (AEVB_MLFLOW_DIR). Without this MLflow would use ./mlruns.
    """
    uri = tracking_uri()
    if uri.split(":", 1)[0] in ("http", "https", "databricks"):
        return None
    if uri.startswith("sqlite:///"):
        base = Path(uri[len("sqlite:///") :]).parent / "artifacts"
    else:
        base = default_mlflow_dir() / "artifacts"
    return (base / experiment_name).resolve().as_uri()


def client() -> MlflowClient:
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    # mlflow.set_*_uri() also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI to the environment.
    # Undo that: our default must not become "the user's choice", or a later change of
    # AEVB_MLFLOW_DIR in this process (tests, notebooks) and every child process would silently
    # keep the old store. MLflow's in-process globals keep the URI for its fluent API.
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# -- failure translation ------------------------------------------------------------------------
def unreachable(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) is a connection failure / timeout after MLflow's retries."""
    import requests

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(
            e, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError)
        ):
            return True
        e = e.__cause__ or e.__context__
    text = str(exc)
    return text.startswith("API request to") and (
        "Max retries exceeded" in text or "timeout" in text
    )


def _tracking_error(exc: BaseException) -> TrackingError:
    text = str(exc)
    cause = re.search(r"Caused by (\w+)", text)
    detail = cause.group(1) if cause else text.splitlines()[0][:200]
    if "Connection refused" in text:
        detail += " (connection refused)"
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    return TrackingError(
        f"MLflow tracking server {tracking_uri()} is unreachable: {detail} after "
        f"{retries} retries. Fix: start the server (see docs/mlflow.md), correct "
        "MLFLOW_TRACKING_URI, or unset it to use the embedded SQLite store under mlflow/ "
        "(MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT bound the waiting)"
    )


def _guarded(fn: Callable) -> Callable:
    """Turn 'server unreachable' (after MLflow's bounded retries) into one TrackingError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:  # MlflowException, or requests errors from artifact transfers
            if unreachable(exc):
                raise _tracking_error(exc) from exc
            fault = store_fault(exc)
            if fault is not None:
                raise fault from exc
            raise

    return wrapper


_SQL_FAULTS = {"readonly database": errno.EROFS, "database or disk is full": errno.ENOSPC}


def _unwritable_folder(folder: str) -> int | None:
    """EROFS / EACCES when ``folder`` exists and cannot take new files, else None."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return errno.EROFS
    except OSError:
        return None
    return None if os.access(folder, os.W_OK) else errno.EACCES


def store_fault(exc: BaseException) -> StorageError | None:
    """One line for an MLflow store that cannot be written (read-only or full database or
    artifact folder), naming the store and the fix; None for anything else."""
    text = str(exc).lower()
    code = next((c for needle, c in _SQL_FAULTS.items() if needle in text), None)
    code = code or fs.fault_errno(exc)
    where = tracking_uri()
    if code is None and "unable to open database file" in text and where.startswith("sqlite:///"):
        code = _unwritable_folder(os.path.dirname(where[len("sqlite:///") :]))  # its journal
    if code is None:
        return None
    what = {
        errno.EROFS: "is read-only",
        errno.ENOSPC: "is on a full file system",
        errno.EDQUOT: "is over its disk quota",
    }.get(code, "is not writable by this user")
    return StorageError(
        f"MLflow store {where} {what} ({os.strerror(code)}). Fix: make it writable or free "
        "space, or use another store: MLFLOW_TRACKING_URI, or AEVB_MLFLOW_DIR for the embedded one"
    )


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


# -- runs ---------------------------------------------------------------------------------------
@_guarded
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
    """The commit of the checkout this code runs from; None for an installed wheel."""
    checkout = source_checkout()
    if checkout is None:
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@_guarded
def start_run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> str:
    tags = dict(tags or {})
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = client().create_run(experiment_id(experiment), run_name=run_name, tags=tags)
    return run.info.run_id


@_guarded
def run_exists(run_id: str) -> bool:
    try:
        client().get_run(run_id)
    except MlflowException as exc:
        if unreachable(exc):
            raise
        return False
    return True


@_guarded
def run_status(run_id: str) -> str:
    """RUNNING, FINISHED, FAILED, KILLED or SCHEDULED."""
    return client().get_run(run_id).info.status


@_guarded
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


@_guarded
def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    flat = flatten(params)
    existing = client().get_run(run_id).data.params
    new = {k: v for k, v in flat.items() if k not in existing}  # immutable; resume re-logs
    if new:
        client().log_batch(run_id, params=[Param(k, v[:6000]) for k, v in new.items()])


@_guarded
def run_params(run_id: str) -> dict[str, str]:
    """The parameters logged to a run (flattened keys such as `model.latent_dim`)."""
    return dict(client().get_run(run_id).data.params)


@_guarded
def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
    if batch:
        client().log_batch(run_id, metrics=batch)


@_guarded
def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    if tags:
        client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


@_guarded
def log_artifact(run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, local_path, artifact_path)


@_guarded
def log_artifacts(run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
    client().log_artifacts(run_id, local_dir, artifact_path)


@_guarded
def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    return sorted(f.path for f in client().list_artifacts(run_id, path))


@_guarded
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


UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous_bernoulli")


def model_description(saved_model_dir: str) -> dict[str, Any]:
    """What a consumer needs to call the model (logged as its metadata ``aevb`` and, for the
    pyfunc's own checks, its ``model_config``): input shape, scale and range, and each output.

    Accepted input range: [0, 1] for the unit-interval likelihoods (their support); for the
    Gaussian decoder the trained model-space range widened by its width on each side (wider
    inputs are almost surely on another scale), or unchecked when the range was not recorded.
    """
    with open(os.path.join(saved_model_dir, "config.json")) as fh:
        saved = json.load(fh)
    model = saved["model"]
    shape = [int(d) for d in model["feature_shape"]]
    dim, latent = int(np.prod(shape)), int(model["latent_dim"])
    trained = saved.get("value_range")
    if model["likelihood"] in UNIT_INTERVAL_LIKELIHOODS:
        trained = trained or [0.0, 1.0]
        accepted = [0.0, 1.0]
    elif trained:
        span = float(trained[1]) - float(trained[0]) or 1.0
        accepted = [float(trained[0]) - span, float(trained[1]) + span]
    else:
        accepted = None
    return {
        "input": {
            "feature_shape": shape,
            "dim": dim,
            "dtype": "float32 (any int/float input, list or DataFrame is cast)",
            "scale": saved.get("scale"),
            "transform": "model input = stored value * scale",
            "trained_range": trained,
            "accepted_range": accepted,
            "likelihood": model["likelihood"],
        },
        "outputs": {
            "z_mean": {"shape": [-1, latent], "meaning": "mean of q(z|x) (the default output)"},
            "z_std": {"shape": [-1, latent], "meaning": "standard deviation of q(z|x)"},
            "reconstruction": {"shape": [-1, dim], "meaning": "E[x | z = z_mean], model space"},
        },
        "dataset": saved.get("dataset"),
        "dataset_version": saved.get("dataset_version"),
    }


def model_signature(description: dict[str, Any]):
    """Outputs: one named tensor per value of ``params={"output": ...}``, each with its own
    shape; predict returns the one selected. No input schema: MLflow's would refuse float64 (a
    tensor spec) or silently drop extra columns (a column spec), so pyfunc_model.py checks and
    casts inputs itself; their shape, scale and range are in the metadata (`model_description`).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    outputs = [
        TensorSpec(np.dtype(np.float32), tuple(o["shape"]), name)
        for name, o in description["outputs"].items()
    ]
    return ModelSignature(
        outputs=Schema(outputs), params=ParamSchema([ParamSpec("output", "string", "z_mean")])
    )


@_guarded
def log_pyfunc_model(run_id: str, saved_model_dir: str, input_example: np.ndarray) -> str:
    """Log the SavedModel as a pyfunc *from code*; returns the logged model URI (models:/m-...).

    The logged model holds pyfunc_model.py, the SavedModel under artifacts/saved_model, the
    signature of `model_signature`, `model_description` as metadata `aevb` and model_config, the
    input example and pinned requirements. Nothing is pickled: the loader is
    mlflow.pyfunc.loaders.code_model.
    """
    description = model_description(saved_model_dir)
    x = np.asarray(input_example, dtype=np.float32).reshape(len(input_example), -1)
    client()  # sets URIs for the fluent call below
    with tempfile.TemporaryDirectory(prefix="aevb-log-") as tmp:
        # MLflow keeps the folder's basename: stage it as `saved_model` for a fixed layout.
        staged = os.path.join(tmp, SAVED_MODEL_KEY)
        shutil.copytree(saved_model_dir, staged)
        with mlflow.start_run(run_id=run_id):  # thread-local; started and ended in this thread
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(PYFUNC_CODE),
                artifacts={SAVED_MODEL_KEY: staged},
                signature=model_signature(description),
                input_example=x,
                pip_requirements=pip_requirements(),
                model_config={"input": description["input"]},
                metadata={"aevb": description},
            )
    return info.model_uri


@_guarded
def logged_model_uri(run_id: str, name: str = MODEL_ARTIFACT) -> str | None:
    """The newest complete model logged to the run under ``name`` (`log_pyfunc_model`), as a
    logged-model URI (models:/m-...), or None: `runs:/<run id>/<name>` resolves to it."""
    run = client().get_run(run_id)
    found = client().search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
    )
    from mlflow.entities import LoggedModelStatus

    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return ready[0].model_uri if ready else None


def pip_requirements() -> list[str]:
    """Exactly what pyfunc_model.py imports (the SavedModel needs TensorFlow only, not TFP)."""
    from importlib.metadata import version

    return [
        f"mlflow=={version('mlflow')}",
        f"tensorflow=={version('tensorflow')}",
        f"numpy=={version('numpy')}",
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


@_guarded
def register_model(
    model_uri: str, name: str, run_id: str, tags: Mapping[str, Any] | None = None
) -> RegisteredVersion:
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException as exc:
        if unreachable(exc):
            raise
        try:
            c.create_registered_model(
                name, description="AEVB model (aevb-pipeline): encoder/decoder pyfunc"
            )
        except MlflowException as exc2:
            if exc2.error_code != "RESOURCE_ALREADY_EXISTS":  # else: created concurrently
                raise
    # A logged model's URI (models:/m-...) needs its model_id too: a tracking server checks that
    # the id names the resource holding the source (the SQLite store does not).
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
    mv = c.create_model_version(
        name,
        model_uri,
        run_id=run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
        model_id=model_id,
    )
    return _to_version(c.get_model_version(name, mv.version))


@_guarded
def get_version(name: str, version: int) -> RegisteredVersion | None:
    try:
        return _to_version(client().get_model_version(name, str(version)))
    except MlflowException as exc:
        if unreachable(exc) or not _not_found(exc):
            raise
        return None


@_guarded
def get_alias(name: str, alias: str) -> RegisteredVersion | None:
    """The version behind ``name@alias``; None if the model or the alias does not exist."""
    try:
        return _to_version(client().get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if unreachable(exc) or not _not_found(exc):
            raise
        return None


@_guarded
def set_alias(name: str, alias: str, version: int) -> None:
    client().set_registered_model_alias(name, alias, str(version))


@_guarded
def set_version_tags(name: str, version: int, tags: Mapping[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(name, str(version), k, str(v))


@_guarded
def list_versions(name: str) -> list[RegisteredVersion]:
    """All versions of ``name`` (oldest first) with their aliases; [] if there is no such model."""
    c = client()
    try:
        aliases = c.get_registered_model(name).aliases or {}  # {alias: version}
    except MlflowException as exc:
        if unreachable(exc) or not _not_found(exc):
            raise
        return []
    out = []
    for mv in c.search_model_versions(f"name = '{name}'"):
        v = _to_version(mv)
        mine = tuple(sorted(a for a, n in aliases.items() if int(n) == v.version))
        out.append(dataclasses.replace(v, aliases=mine))
    return sorted(out, key=lambda v: v.version)


@_guarded
def list_registered_models() -> list[str]:
    names = (m.name for m in client().search_registered_models())
    return sorted(n for n in names if not n.endswith(LOCK_SUFFIX))


@contextlib.contextmanager
def registry_lock(
    name: str, timeout: float = 300.0, stale_after: float = 120.0, owner: str = ""
) -> Iterator[None]:
    """Mutual exclusion for alias changes of registered model ``name``, across processes/hosts.

    The lock is the registered model `<name>.gate-lock`: creating it is atomic (unique name), so
    exactly one holder succeeds; releasing deletes it. A lock older than ``stale_after`` seconds
    belongs to a killed process and is broken. Hold it only for a few registry calls.
    """
    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + timeout
    _acquire(lock, deadline, stale_after, owner or f"pid {os.getpid()}")
    try:
        yield
    finally:
        _release(lock)


@_guarded
def _acquire(lock: str, deadline: float, stale_after: float, owner: str) -> None:
    c = client()
    while True:
        try:
            c.create_registered_model(lock, description=f"aevb gate lock held by {owner}")
            return
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = c.get_registered_model(lock)
        except MlflowException as exc:
            if unreachable(exc) or not _not_found(exc):
                raise
            continue  # released in between: try again at once
        age = time.time() - held.creation_timestamp / 1000.0
        if age > stale_after:
            with contextlib.suppress(MlflowException):  # someone else may break it first
                c.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise TrackingError(
                f"registry lock {lock!r} at {tracking_uri()} is held ({held.description}, "
                f"{age:.0f} s old); another registration is running. Retry later, or delete the "
                f"registered model {lock!r} if no aevb process is running"
            )
        time.sleep(random.uniform(0.05, 0.25))


@_guarded
def _release(lock: str) -> None:
    try:
        client().delete_registered_model(lock)
    except MlflowException as exc:
        if unreachable(exc) or not _not_found(exc):
            raise


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    name: str | None
    version: int | None
    run_id: str | None
    saved_model_dir: str


_RUN_URI = re.compile(r"runs:/([0-9A-Za-z]{1,64})/(.+)")
_LOGGED_URI = re.compile(r"models:/(m-[0-9A-Za-z]{1,64})")


def parse_model_uri(uri: str) -> tuple[str, str, str]:
    """(kind, a, b) of a model URI, checked for syntax only (no store is touched):
    ("alias", name, alias) | ("version", name, number) | ("run", run_id, path) | ("logged", id, "").

    ModelError otherwise: names and paths inside a URI never walk out of the registry
    (no empty parts, no '..', no control characters)."""
    bad = ModelError(
        f"model_uri={uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model "
        "(e.g. models:/aevb-digits@champion)"
    )
    if not isinstance(uri, str) or any(ord(c) < 32 for c in uri):
        raise bad
    if m := _LOGGED_URI.fullmatch(uri):
        return "logged", m.group(1), ""
    if m := _RUN_URI.fullmatch(uri):
        parts = m.group(2).split("/")
        if any(p in ("", ".", "..") or "\\" in p for p in parts):
            raise bad
        return "run", m.group(1), m.group(2)
    if not uri.startswith("models:/"):
        raise bad
    ref = uri[len("models:/") :]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        kind = "alias"
        ok = bool(re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias))
    else:
        name, _, alias = ref.rpartition("/")
        kind, ok = "version", alias.isdigit() and int(alias) > 0
    if not ok or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise bad
    return kind, name, alias


@_guarded
def find_model(uri: str) -> RegisteredVersion | None:
    """The registered version a model URI names (None for run and logged-model URIs); ModelError
    if the registry has no such name, alias or version. Downloads nothing."""
    kind, name, ref = parse_model_uri(uri)
    if kind in ("run", "logged"):
        return None
    found = get_alias(name, ref) if kind == "alias" else get_version(name, int(ref))
    if found is None:
        raise ModelError(
            f"model_uri={uri!r}: no such registered model version in the MLflow store at "
            f"{tracking_uri()}; list models with `aevb models list`"
        )
    return found


def _cache_key(uri: str, kind: str, mv: RegisteredVersion | None) -> str:
    """Readable and unique per store: ``<name>-v<N>-<hash>`` or ``<kind>-<hash>``."""
    import hashlib

    ident = [tracking_uri(), uri] if mv is None else [tracking_uri(), mv.name, str(mv.version),
                                                      mv.run_id or "", mv.source or ""]  # fmt: skip
    digest = hashlib.sha256("\0".join(ident).encode()).hexdigest()[:12]
    if mv is None:
        return f"{kind}-{digest}"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", mv.name).lstrip(".")[:60] or "model"
    return f"{safe}-v{mv.version}-{digest}"


@_guarded
def resolve_model(uri: str, dst_dir: str | None = None) -> ResolvedModel:
    """A model (`models:/name@alias`, `models:/name/3`, `runs:/id/model`) as a local SavedModel.

    Downloads go to the managed model cache (tasks/model_cache.py: keyed by model version,
    bounded, reused across commands; nothing is left in TMPDIR), or into ``dst_dir`` if given.
    The URI's syntax and the registry entry are checked before anything is downloaded.
    """
    from tasks import model_cache

    kind, a, _ = parse_model_uri(uri)
    mv = find_model(uri)
    name, version = (mv.name, mv.version) if mv else (None, None)
    run_id = mv.run_id if mv else (a if kind == "run" else None)
    # An alias can move: download the version it named when looked up.
    source = f"models:/{mv.name}/{mv.version}" if mv else uri

    def download(folder: str) -> None:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=folder)
        # runs:/ID/model lands in folder/model: remember where the MLmodel file is
        Path(folder, MODEL_ROOT_FILE).write_text(os.path.relpath(local, folder))

    try:
        if dst_dir is not None:
            download(dst_dir)
            entry = dst_dir
        else:
            entry = model_cache.get(_cache_key(uri, kind, mv), download)
        local = os.path.normpath(os.path.join(entry, Path(entry, MODEL_ROOT_FILE).read_text()))
    except MlflowException as exc:
        if unreachable(exc):
            raise
        raise ModelError(
            f"model_uri={uri!r}: cannot resolve it in the MLflow store at {tracking_uri()} "
            f"({str(exc).splitlines()[0]}); list models with `aevb models list`"
        ) from exc
    saved = _saved_model_path(local)
    if saved is None or not os.path.isdir(saved):
        raise ModelError(
            f"model_uri={uri!r}: the downloaded model has no '{SAVED_MODEL_KEY}' artifact; "
            "it was not logged by aevb"
        )
    return ResolvedModel(uri, name, version, run_id, saved)


def _saved_model_path(local_model_dir: str) -> str | None:
    """Where the pyfunc's `saved_model` artifact sits in a downloaded model (read from MLmodel)."""
    from mlflow.models import Model

    try:
        flavor = Model.load(local_model_dir).flavors.get("python_function", {})
    except (OSError, MlflowException):
        return None
    rel = (flavor.get("artifacts") or {}).get(SAVED_MODEL_KEY, {}).get("path")
    return os.path.join(local_model_dir, rel) if rel else None
