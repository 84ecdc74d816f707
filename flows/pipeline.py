"""The `pipeline` flow: ingest -> train -> evaluate -> gate/register -> export, and its scheduled
form `retrain_flow` (composition only: every stage is a task of tasks/).

Stages run on the flow's task runner (threads by default, Dask with `pipeline.task_runner =
"dask"`) and hand each other names, versions, run ids, paths and URIs, never arrays. What an
operator can rely on:

- unchanged source content is not re-ingested (the ingest task's cache key is the content hash);
- unchanged dataset version *and* config: training finds its identical finished run and nothing
  else runs (summary: "skipped"), unless `pipeline.retrain_on_unchanged = true`;
- a new dataset version (or config) trains a new model version, gated: the `champion` alias moves
  only if the held-out log p(x) beats the champion's on the same dataset version;
- two retrains of the same registered model never overlap: everything after ingest holds the
  Prefect global concurrency limit `aevb-train-<model name>` (1 slot). A second run *waits* for it
  up to `pipeline.lock_timeout_seconds`, then fails with a one-line `PipelineError`;
- stages retry only after transient I/O errors (tasks/runners.py);
- a markdown artifact `aevb-<model name>-summary` holds MLflow links and a metrics table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import flow, get_run_logger

from flows.config import PipelineConfig, load_config
from flows.stages import run_ingest_task
from flows.summary import Outcome, PipelineSummary, publish_artifact
from models.errors import PipelineError
from tasks import tracking
from tasks.evaluate import evaluate_task
from tasks.export import encode_part_task, export_latents
from tasks.ingest import ingest, ingest_task, stage_shard_task
from tasks.register import default_model_name, register_task
from tasks.runners import make_task_runner, with_io_retries
from tasks.store.roots import resolve_data_root
from tasks.store.tables import latent_table_path
from tasks.store.writer import IngestResult
from tasks.train import TrainOutput, train_task

LOCK_PREFIX = "aevb-train-"


def lock_name(model_name: str) -> str:
    return LOCK_PREFIX + model_name


@contextmanager
def model_lock(model_name: str, timeout_seconds: float) -> Iterator[float]:
    """Hold the 1-slot global concurrency limit of ``model_name``; yields the seconds waited.

    The limit is created (limit 1) on first use, so it exists on whichever Prefect API the run
    talks to. Waiting longer than ``timeout_seconds`` raises PipelineError. A crashed holder's
    slot is freed when its lease expires (5 minutes).
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = lock_name(model_name)
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
        except ObjectAlreadyExists:
            pass  # created concurrently by another run
    start, acquired = time.monotonic(), False
    try:
        with concurrency(
            name,
            occupy=1,
            timeout_seconds=timeout_seconds,
            strict=True,
            raise_on_lease_renewal_failure=False,  # a server blip must not kill a long training
        ):
            acquired = True
            yield time.monotonic() - start
    except TimeoutError as exc:
        if acquired:
            raise
        raise PipelineError(
            f"another retrain of model {model_name!r} holds the concurrency limit {name!r}; "
            f"gave up after waiting {timeout_seconds:g} s (pipeline.lock_timeout_seconds). "
            f"Retry later, or inspect it with `prefect gcl inspect {name}`"
        ) from exc


def _stage(config: PipelineConfig):
    p = config.pipeline
    return lambda task: with_io_retries(task, p.retries, p.retry_delay_seconds)


def ingest_step(config: PipelineConfig, root: str) -> tuple[IngestResult, bool]:
    """The data section as one dataset version; (result, Prefect cache hit)."""
    d, stage = config.data, _stage(config)
    split = dict(
        split_seed=d.split_seed, valid_fraction=d.valid_fraction, test_fraction=d.test_fraction
    )
    if d.shards and not uses_default_runner(config):  # one task per shard on the task runner
        result = ingest(
            list(d.shards),
            d.dataset_name,
            root,
            **split,
            **dict(d.options),
            prefix_ids=d.prefix_shard_ids,
            shard_task=stage(stage_shard_task),
        )
        return result, False
    source = list(d.shards) if d.shards else d.source
    return run_ingest_task(
        stage(ingest_task),
        source,
        d.dataset_name,
        root,
        **split,
        prefix_ids=d.prefix_shard_ids if d.shards else False,
        **dict(d.options),
    )


def unchanged_step(
    config: PipelineConfig, ingested: IngestResult, trained: TrainOutput, model_name: str, root: str
) -> Outcome | None:
    """The outcome when this exact training is already registered (nothing to do), else None."""
    if not trained.reused:
        return None
    registered = [v for v in tracking.list_versions(model_name) if v.run_id == trained.run_id]
    if not registered:
        return None
    version = registered[-1]
    champion = tracking.get_alias(model_name, "champion")
    is_champion = champion is not None and champion.version == version.version
    decision = (
        f"skipped: dataset version {ingested.version[:12]} and config unchanged since "
        f"{model_name} v{version.version} (MLflow run {trained.run_id}); nothing to retrain "
        "(set pipeline.retrain_on_unchanged=true to retrain anyway)"
    )
    shown = champion.version if champion is not None else version.version
    table = latent_table_path(root, ingested.name, model_name, shown)
    return Outcome(None, version.version, is_champion, decision, table, 0, skipped=True)


def evaluate_register_export(
    config: PipelineConfig, ingested: IngestResult, trained: TrainOutput, model_name: str, root: str
) -> Outcome:
    log, e, stage = get_run_logger(), config.evaluate, _stage(config)
    log.info("[3/5] evaluate: %s split, K=%d importance samples", e.split, e.num_samples)
    evaluated = (
        stage(evaluate_task)
        .submit(
            trained.saved_model_dir,
            ingested.name,
            ingested.version,
            root,
            e.split,
            e.num_samples,
            e.batch_size,
            e.seed,
            run_id=trained.run_id,
        )
        .result()
    )
    log.info(
        "[3/5] evaluate: log p(x) %.3f +- %.3f nats, ELBO %.3f",
        evaluated.log_marginal_likelihood,
        evaluated.log_marginal_likelihood_stderr,
        evaluated.elbo,
    )
    registered = (
        stage(register_task)
        .submit(
            trained.run_id,
            trained.saved_model_dir,
            ingested.name,
            ingested.version,
            evaluated.log_marginal_likelihood,
            model_name,
            root,
            e.split,
            e.num_samples,
            e.seed,
        )
        .result()
    )
    log.info("[4/5] register: %s v%d; %s", registered.name, registered.version, registered.decision)
    exported = export_latents(  # one task per (split, part file) on the flow's task runner
        f"models:/{registered.name}@champion",
        ingested.name,
        root,
        ingested.version,
        config.export.splits,
        config.export.batch_size,
        part_task=stage(encode_part_task),
        log_px_samples=config.export.log_px_samples,
    )
    log.info("[5/5] export: %s (%d rows)", exported.path, exported.rows)
    return Outcome(
        evaluated,
        registered.version,
        registered.promoted,
        registered.decision,
        exported.path,
        exported.rows,
        skipped=False,
    )


def run_pipeline(config: PipelineConfig) -> PipelineSummary:
    """The body shared by `pipeline_flow` and `retrain_flow` (must run inside a flow)."""
    log = get_run_logger()
    root = resolve_data_root(config.data.data_root)
    log.info("[1/5] ingest: %s -> %s", config.data.source, root)
    ingested, cache_hit = ingest_step(config, root)
    log.info(
        "[1/5] ingest: %s version %s (%s)",
        ingested.name,
        ingested.version[:12],
        "new content" if ingested.created else "unchanged; nothing written",
    )
    model_name = config.register.model_name or default_model_name(ingested.name)
    log.info("[2/5] train: waiting for the retrain lock %s", lock_name(model_name))
    with model_lock(model_name, config.pipeline.lock_timeout_seconds) as waited:
        acquired_at = time.time()
        log.info("[2/5] train: lock acquired after %.1f s", waited)
        trained = (
            _stage(config)(train_task)
            .submit(
                ingested.name,
                config.model,
                config.train,
                root,
                ingested.version,
                force=config.pipeline.retrain_on_unchanged,
            )
            .result()
        )
        outcome = unchanged_step(config, ingested, trained, model_name, root)
        if outcome is not None:
            log.info("[3/5] %s", outcome.decision)
        else:
            log.info(
                "[2/5] train: %s (run %s)",
                "reused the finished identical run" if trained.reused else "done",
                trained.run_id,
            )
            outcome = evaluate_register_export(config, ingested, trained, model_name, root)
        released_at = time.time()
    summary = PipelineSummary.of(
        ingested, cache_hit, root, trained, model_name, outcome, waited, acquired_at, released_at
    )
    publish_artifact(summary, trained, outcome.evaluated)
    return summary


@flow(name="aevb-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig) -> PipelineSummary:
    """ingest -> train -> evaluate -> register -> export for one validated config."""
    return run_pipeline(config)


@flow(name="aevb-retrain", log_prints=True)
def retrain_flow(
    config_file: str | None = None, overrides: list[str] | None = None
) -> PipelineSummary:
    """Entry point of the scheduled deployment: re-read + validate the config, run the pipeline."""
    config = load_config(config_file, overrides or [])
    if uses_default_runner(config):
        return run_pipeline(config)
    return with_task_runner(pipeline_flow, config)(config)


def uses_default_runner(config: PipelineConfig) -> bool:
    return config.pipeline.task_runner == "threads" and not config.pipeline.workers


def with_task_runner(flow_obj, config: PipelineConfig):
    """``flow_obj`` running its tasks on the runner named by ``config.pipeline``."""
    p = config.pipeline
    return flow_obj.with_options(
        task_runner=make_task_runner(p.task_runner, p.dask_address or None, p.workers or None)
    )
