"""One Prefect flow per stage, for running a stage on its own (`aevb ingest|train|evaluate|export`)."""

from __future__ import annotations

from prefect import flow

from flows.config import PipelineConfig
from tasks.evaluate import EvaluationSummary, evaluate_task
from tasks.export import ExportOutput, export_task
from tasks.ingest import IngestResult, run_ingest_task
from tasks.train import TrainOutput, train_task


@flow(name="aevb-ingest")
def ingest_flow(
    source: str,
    name: str | None = None,
    data_root: str | None = None,
    split_seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    options: dict | None = None,
) -> IngestResult:
    return run_ingest_task(
        source,
        name,
        data_root,
        split_seed=split_seed,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        **(options or {}),
    )


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
    split: str = "test",
    num_samples: int = 5000,
    batch_size: int = 500,
    seed: int = 0,
    run_id: str | None = None,
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
    )


@flow(name="aevb-export")
def export_flow(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    batch_size: int = 2000,
) -> ExportOutput:
    return export_task(model_uri, dataset, data_root, version, splits, batch_size)
