"""The `pipeline` flow: ingest -> train -> evaluate -> gate/register -> export, and its scheduled form.

Stages are Prefect tasks submitted to the flow's task runner (threads by default, Dask with
`pipeline.task_runner = "dask"`); they hand each other names, versions, run ids, paths and URIs,
never arrays. Semantics an operator can rely on:

- unchanged source content is not re-ingested (the ingest task's cache key is the content hash);
- unchanged dataset version *and* config: training finds its identical finished run and nothing
  else runs (summary: "skipped"), unless `pipeline.retrain_on_unchanged = true`;
- a new dataset version (or config) trains a new model version, gated: the `champion` alias moves
  only if the held-out log p(x) beats the champion's on the same dataset version;
- two retrains of the same registered model never overlap: everything after ingest holds the
  Prefect global concurrency limit `aevb-train-<model name>` (1 slot). A second run *waits* for it
  up to `pipeline.lock_timeout_seconds`, then fails with a one-line `PipelineError`;
- stages retry only after transient I/O errors (flows/stages.py);
- a markdown artifact `aevb-<model name>-summary` holds MLflow links and a metrics table.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prefect import flow, get_run_logger

from flows.config import PipelineConfig, load_config
from flows.stages import run_ingest_stage, with_io_retries
from models.errors import PipelineError
from tasks.evaluate import evaluate_task
from tasks.export import latent_table_path
from tasks.fanout import export_shards, ingest_shards
from tasks.register import default_model_name, register_task
from tasks.train import train_task

LOCK_PREFIX = "aevb-train-"


@dataclass(frozen=True)
class PipelineSummary:
    dataset: str
    dataset_version: str
    dataset_path: str
    dataset_created: bool  # False: identical content was already stored
    ingest_cache_hit: bool  # the Prefect cache answered the ingest task
    data_root: str
    run_id: str
    experiment: str
    saved_model_dir: str
    skipped: bool  # nothing to retrain: the registered model already saw this data and config
    test_elbo: float | None
    test_log_marginal_likelihood: float | None
    test_log_marginal_likelihood_stderr: float | None
    num_importance_samples: int | None
    model_name: str
    model_version: int | None
    promoted: bool
    decision: str
    latent_table: str
    latent_rows: int
    lock_wait_seconds: float
    lock_acquired_at: float
    lock_released_at: float
    artifact_key: str


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


def run_pipeline(config: PipelineConfig) -> PipelineSummary:
    """The body shared by `pipeline_flow` and `retrain_flow` (must run inside a flow)."""
    from tasks import tracking
    from tasks.datasets import resolve_data_root

    log = get_run_logger()
    d, p, e = config.data, config.pipeline, config.evaluate

    def stage(task):
        return with_io_retries(task, p.retries, p.retry_delay_seconds)

    root = resolve_data_root(d.data_root)
    log.info("[1/5] ingest: %s -> %s", d.source, root)
    if d.shards:  # one task per shard file on the flow's task runner (threads or Dask)
        ingested = ingest_shards(
            list(d.shards), d.dataset_name, root, d.split_seed, d.valid_fraction, d.test_fraction,
            options=dict(d.options), prefix_ids=d.prefix_shard_ids, wrap=stage,
        )  # fmt: skip
        cache_hit = False
    else:
        ingested, cache_hit = run_ingest_stage(
            d.source, d.dataset_name, root, p.retries, p.retry_delay_seconds,
            split_seed=d.split_seed, valid_fraction=d.valid_fraction, test_fraction=d.test_fraction,
            **d.options,
        )  # fmt: skip
    log.info(
        "[1/5] ingest: %s version %s (%s)",
        ingested.name,
        ingested.version[:12],
        "new content" if ingested.created else "unchanged; nothing written",
    )
    model_name = config.register.model_name or default_model_name(ingested.name)
    evaluated = None
    log.info("[2/5] train: waiting for the retrain lock %s", lock_name(model_name))
    with model_lock(model_name, p.lock_timeout_seconds) as waited:
        acquired_at = time.time()
        log.info("[2/5] train: lock acquired after %.1f s", waited)
        trained = stage(train_task).submit(
            ingested.name, config.model, config.train, root, ingested.version,
            force=p.retrain_on_unchanged,
        ).result()  # fmt: skip
        registered_before = [
            v for v in tracking.list_versions(model_name) if v.run_id == trained.run_id
        ] if trained.reused else []  # fmt: skip
        if registered_before:
            version = registered_before[-1]
            champion = tracking.get_alias(model_name, "champion")
            is_champion = champion is not None and champion.version == version.version
            decision = (
                f"skipped: dataset version {ingested.version[:12]} and config unchanged since "
                f"{model_name} v{version.version} (MLflow run {trained.run_id}); nothing to retrain "
                "(set pipeline.retrain_on_unchanged=true to retrain anyway)"
            )
            log.info("[3/5] %s", decision)
            shown = champion.version if champion is not None else version.version
            table = latent_table_path(root, ingested.name, model_name, shown)
            released_at = time.time()
            summary = _summary(config, ingested, cache_hit, root, trained, None, model_name,
                               version.version, is_champion, decision, table, 0,
                               waited, acquired_at, released_at, skipped=True)  # fmt: skip
        else:
            log.info(
                "[2/5] train: %s (run %s)",
                "reused the finished identical run" if trained.reused else "done",
                trained.run_id,
            )
            log.info("[3/5] evaluate: %s split, K=%d importance samples", e.split, e.num_samples)
            evaluated = stage(evaluate_task).submit(
                trained.saved_model_dir, ingested.name, ingested.version, root, e.split,
                e.num_samples, e.batch_size, e.seed, run_id=trained.run_id,
            ).result()  # fmt: skip
            log.info(
                "[3/5] evaluate: log p(x) %.3f +- %.3f nats, ELBO %.3f",
                evaluated.log_marginal_likelihood,
                evaluated.log_marginal_likelihood_stderr,
                evaluated.elbo,
            )
            registered = stage(register_task).submit(
                trained.run_id, trained.saved_model_dir, ingested.name, ingested.version,
                evaluated.log_marginal_likelihood, model_name, root, e.split, e.num_samples, e.seed,
            ).result()  # fmt: skip
            log.info("[4/5] register: %s v%d; %s", registered.name, registered.version,
                     registered.decision)  # fmt: skip
            exported = export_shards(  # one task per (split, part file) on the task runner
                f"models:/{registered.name}@champion", ingested.name, root, ingested.version,
                config.export.splits, config.export.batch_size, wrap=stage,
            )  # fmt: skip
            log.info("[5/5] export: %s (%d rows)", exported.path, exported.rows)
            released_at = time.time()
            summary = _summary(config, ingested, cache_hit, root, trained, evaluated, model_name,
                               registered.version, registered.promoted, registered.decision,
                               exported.path, exported.rows, waited, acquired_at, released_at,
                               skipped=False)  # fmt: skip
    _publish_artifact(summary, trained, evaluated)
    return summary


def _summary(config, ingested, cache_hit, root, trained, evaluated, model_name, version, promoted,
             decision, table, rows, waited, acquired_at, released_at, skipped) -> PipelineSummary:  # fmt: skip
    return PipelineSummary(
        dataset=ingested.name,
        dataset_version=ingested.version,
        dataset_path=ingested.path,
        dataset_created=ingested.created,
        ingest_cache_hit=cache_hit,
        data_root=root,
        run_id=trained.run_id,
        experiment=trained.experiment,
        saved_model_dir=trained.saved_model_dir,
        skipped=skipped,
        test_elbo=None if evaluated is None else evaluated.elbo,
        test_log_marginal_likelihood=None
        if evaluated is None
        else evaluated.log_marginal_likelihood,
        test_log_marginal_likelihood_stderr=None
        if evaluated is None
        else evaluated.log_marginal_likelihood_stderr,
        num_importance_samples=None if evaluated is None else evaluated.num_samples,
        model_name=model_name,
        model_version=version,
        promoted=promoted,
        decision=decision,
        latent_table=table,
        latent_rows=rows,
        lock_wait_seconds=waited,
        lock_acquired_at=acquired_at,
        lock_released_at=released_at,
        artifact_key=artifact_key(model_name),
    )


def artifact_key(model_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"aevb-{model_name}-summary".lower()).strip("-")


def _publish_artifact(summary: PipelineSummary, trained, evaluated) -> None:
    from prefect.artifacts import create_markdown_artifact

    from flows.pipeline_cli import summary_markdown

    create_markdown_artifact(
        markdown=summary_markdown(summary, trained, evaluated),
        key=summary.artifact_key,
        description=f"aevb pipeline: {summary.dataset} -> {summary.model_name}",
    )


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
    from tasks.fanout import make_task_runner

    p = config.pipeline
    return flow_obj.with_options(
        task_runner=make_task_runner(p.task_runner, p.dask_address or None, p.workers or None)
    )
