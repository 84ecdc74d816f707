"""Every single-stage Prefect flow: what `aevb ingest|train|evaluate|export|score|sample|corrupt|
restore` run.

Each flow is a thin shell around one stage task (tasks/), so every verb shows up in the Prefect UI
with its task run, logs and artifacts. The pipeline (flows/pipeline.py) composes the same tasks.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import PipelineConfig
from flows.settings import quiet_user_error_tracebacks
from models import constants as C
from tasks.corrupt import CorruptOutput, corrupt_task
from tasks.evaluate import EvaluationSummary, evaluate_task
from tasks.export import ExportOutput, export_task, score_task
from tasks.ingest import ingest_task
from tasks.restore import RestoreOutput, RestoreSettings, decode_latents_task, restore_task
from tasks.sample import SampleOutput, sample_task
from tasks.store.writer import IngestResult
from tasks.train import TrainOutput, train_task

# Flows imported from Python (a notebook) get the CLI's logging set-up (flows/settings.py).
quiet_user_error_tracebacks()


def run_ingest_task(
    task: Any, source: str | list[str], name: str | None, data_root: str | None, **kwargs: Any
) -> tuple[IngestResult, bool]:
    """Call an ingest task (``ingest_task``, maybe with retries); returns (result, cache_hit).

    A cache hit means the source content is unchanged: the result then says ``created=False``.
    """
    state = task(source, name, data_root, return_state=True, **kwargs)
    result: IngestResult = state.result()
    cached = state.name == "Cached"
    if cached and result.created:
        result = IngestResult(result.name, result.version, result.path, created=False)
    return result, cached


@flow(name="aevb-ingest")
def ingest_flow(
    source: str | list[str],
    name: str | None = None,
    data_root: str | None = None,
    split_seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    options: dict[str, Any] | None = None,
    prefix_ids: bool = False,
) -> IngestResult:
    """One source (or several shard files) -> one dataset version (cached on the content)."""
    result, _ = run_ingest_task(
        ingest_task,
        source,
        name,
        data_root,
        split_seed=split_seed,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        prefix_ids=prefix_ids,
        **(options or {}),
    )
    return result


@flow(name="aevb-train")
def train_flow(
    dataset: str,
    config: PipelineConfig,
    data_root: str | None = None,
    version: str | None = None,
    force: bool = False,
) -> TrainOutput:
    return train_task(dataset, config.model, config.train, data_root, version, force=force)


@flow(name="aevb-evaluate")
def evaluate_flow(
    saved_model_dir: str,
    dataset: str,
    version: str | None = None,
    data_root: str | None = None,
    split: str = C.TEST,
    num_samples: int = 5000,
    batch_size: int = 500,
    seed: int = 0,
    run_id: str | None = None,
    method: str = "is",
    max_points: int | None = None,
    options: dict[str, Any] | None = None,
    model_label: str | None = None,
) -> EvaluationSummary:
    return evaluate_task(
        saved_model_dir,
        dataset,
        version,
        data_root,
        split,
        num_samples,
        batch_size,
        seed,
        run_id=run_id,
        method=method,
        max_points=max_points,
        options=options,
        model_label=model_label,
        publish=True,
    )


@flow(name="aevb-export")
def export_flow(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = C.SPLITS,
    batch_size: int = 2000,
    samples: int = 0,
    seed: int = 0,
    log_px_samples: int = 0,
    elbo: bool = True,
) -> ExportOutput:
    return export_task(
        model_uri,
        dataset,
        data_root,
        version,
        splits,
        batch_size,
        samples,
        seed,
        log_px_samples=log_px_samples,
        elbo=elbo,
    )


@flow(name="aevb-score")
def score_flow(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = C.SPLITS,
    batch_size: int = 2000,
    log_px_samples: int = 1000,
    seed: int = 0,
) -> ExportOutput:
    """The latent table with per-row anomaly scores (elbo, log_px) for any dataset version."""
    return score_task(
        model_uri, dataset, data_root, version, splits, batch_size, log_px_samples, seed
    )


@flow(name="aevb-sample")
def sample_flow(
    model_uri: str,
    num_samples: int = 64,
    seed: int = 0,
    draws: bool = False,
    manifold_size: int = 20,
    data_root: str | None = None,
) -> SampleOutput:
    """x ~ p(z) p(x|z) from a registry model: table + pictures, logged to the model's run."""
    return sample_task(model_uri, num_samples, seed, draws, manifold_size, data_root)


@flow(name="aevb-corrupt")
def corrupt_flow(
    dataset: str,
    kind: str,
    name: str | None = None,
    data_root: str | None = None,
    version: str | None = None,
    options: dict[str, Any] | None = None,
) -> CorruptOutput:
    return corrupt_task(dataset, kind, name, data_root, version, **(options or {}))


@flow(name="aevb-restore")
def restore_flow(
    model_uri: str,
    dataset: str,
    method: str = "map",
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = (C.TEST,),
    settings: RestoreSettings | None = None,
    kind: str | None = None,
    mask: str | None = None,
    log_to_mlflow: bool = True,
) -> RestoreOutput:
    return restore_task(
        model_uri, dataset, method, data_root, version, splits, settings, kind, mask, log_to_mlflow
    )


@flow(name="aevb-restore-from-latents")
def decode_latents_flow(
    model_uri: str, table: str, data_root: str | None = None, batch_size: int = 2000
) -> RestoreOutput:
    return decode_latents_task(model_uri, table, data_root, batch_size)
