"""The `pipeline` flow: ingest -> train -> evaluate -> gate/register -> export, and its scheduled
form `retrain_flow` (composition only: every stage is a task of tasks/).

Stages run on the flow's task runner (threads by default, Dask with `pipeline.task_runner =
"dask"`) and hand each other names, versions, run ids, paths and URIs, never arrays. What an
operator can rely on:

- unchanged source content is not re-ingested (the ingest task's cache key is the content hash);
- a rerun completes what an earlier (killed) run left undone, found in the stores themselves: an
  interrupted training resumes from its checkpoint, a finished training that was never
  registered is evaluated and registered, a registered version without a gate decision (or one
  taken under other evaluation settings) is gated, and the champion's latent table is exported
  if it is missing or out of date (`export.splits`). The summary lists what it completed;
- unchanged dataset version, config and evaluation/export settings with nothing missing: nothing
  runs (summary: "skipped"), unless `pipeline.retrain_on_unchanged = true`;
- before a new dataset version is trained, the champion is scored on its `evaluate.split`
  (tasks/drift.py, K = `pipeline.drift_samples`): the drift against its own version's score, in
  nats per row, is logged to the new run (metric `drift_nats`, tags `aevb.drift.*`) and printed;
  over `pipeline.drift_nats` the run fails in one line before training (nothing registered);
- a new dataset version (or config) trains a new model version, gated: the `champion` alias moves
  only if the held-out log p(x) beats a comparable champion's (tasks/register.py);
- two retrains of the same registered model never overlap: everything after ingest holds the
  retrain lock of tasks/locks.py (the 1-slot Prefect global concurrency limit
  `aevb-train-<model name>`, freed by the next run when its holder died). A second run *waits*
  up to `pipeline.lock_timeout_seconds`, then fails with a one-line `PipelineError`;
- stages retry only after transient I/O errors (tasks/runners.py);
- a markdown artifact `aevb-<model name>-summary` holds MLflow links and a metrics table.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from flows.config import PipelineConfig, load_config
from flows.stages import run_ingest_task
from flows.summary import Outcome, PipelineSummary, publish_artifact
from tasks import drift, locks, register, tracking
from tasks.evaluate import evaluate_task
from tasks.export import encode_part_task, export_latents
from tasks.ingest import ingest, ingest_task, stage_shard_task
from tasks.register import default_model_name, gate_task, register_task
from tasks.runners import make_task_runner, with_io_retries
from tasks.store import datasets, publish
from tasks.store.datasets import load_manifest
from tasks.store.roots import resolve_data_root
from tasks.store.writer import IngestResult
from tasks.train import TrainOutput, train_task


def model_lock(model_name: str, timeout_seconds: float):
    """The retrain lock of ``model_name`` (tasks/locks.py): yields the seconds waited."""
    return locks.retrain_lock(model_name, timeout_seconds)


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


def evaluate_step(config: PipelineConfig, ingested: IngestResult, trained: TrainOutput, root: str):
    log, e = get_run_logger(), config.evaluate
    log.info("[3/5] evaluate: %s split, K=%d importance samples", e.split, e.num_samples)
    evaluated = (
        _stage(config)(evaluate_task)
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
    publish.fault_point("pipeline_after_evaluate")
    return evaluated


def gate_step(config, ingested, trained, model_name, root, version, completed):
    """Register + gate this training, or finish what an earlier run left undone: a version
    registered but never gated, or gated under other evaluation settings, is (re)gated.
    Returns (RegisterOutput, the evaluation if one ran)."""
    e, stage = config.evaluate, _stage(config)
    settings = (e.split, e.num_samples, e.seed)
    if version is None:
        evaluated = evaluate_step(config, ingested, trained, root)
        if trained.reused:
            completed.append(
                f"registered and gated the finished training run {trained.run_id} "
                "(an earlier pipeline run stopped before registering it)"
            )
        args = (trained.run_id, trained.saved_model_dir, ingested.name, ingested.version)
        lml = evaluated.log_marginal_likelihood
        return stage(register_task).submit(
            *args, lml, model_name, root, *settings
        ).result(), evaluated
    evaluated, score = None, register.recorded_score(version, ingested.version, *settings)
    if score is None:
        evaluated = evaluate_step(config, ingested, trained, root)
        score = evaluated.log_marginal_likelihood
    if register.TAG_DECISION not in version.tags:
        completed.append(f"gated v{version.version} (it was registered but never gated)")
    else:
        key = register.evaluation_key(ingested.version, *settings)
        completed.append(f"re-gated v{version.version} under new evaluation settings ({key})")
    gated = stage(gate_task).submit(model_name, version.version, root, *settings, score=score)
    return gated.result(), evaluated


def export_step(config, ingested, model_name, root) -> tuple[str, int, bool, str]:
    """The champion's latent table of this dataset version: (path, rows, written now, why not)."""
    champion = tracking.get_alias(model_name, register.CHAMPION)
    manifest = load_manifest(root, ingested.name, ingested.version)
    why = "no champion" if champion is None else ""
    why = why or register.serves_dataset(champion, ingested.name, manifest.feature_shape)
    if why:
        get_run_logger().info("[5/5] export: nothing to export: the champion %s", why)
        return "", 0, False, f"not exported: the champion {why}"
    exported = export_latents(  # one task per (split, part file) on the flow's task runner
        f"models:/{model_name}/{champion.version}",
        ingested.name,
        root,
        ingested.version,
        config.export.splits,
        config.export.batch_size,
        part_task=_stage(config)(encode_part_task),
        log_px_samples=config.export.log_px_samples,
        elbo=config.export.elbo,
    )
    get_run_logger().info("[5/5] export: %s (%d rows)", exported.path, exported.rows)
    return exported.path, exported.rows, exported.created, ""


def finish_step(
    config: PipelineConfig, ingested: IngestResult, trained: TrainOutput, model_name: str, root: str
) -> Outcome:
    """Evaluate, gate and export what the stores say is still missing for this training (all
    of it for a new one), and say what was completed for an earlier, interrupted run."""
    log, e = get_run_logger(), config.evaluate
    completed: list[str] = []
    if trained.resumed_from_epoch:
        completed.append(
            f"finished the interrupted training from its epoch-{trained.resumed_from_epoch} "
            "checkpoint"
        )
    version = register.version_of_run(model_name, trained.run_id)
    settings = (ingested.version, e.split, e.num_samples, e.seed)
    evaluated = None
    if version is not None and register.is_gated(version, *settings):
        decision = version.tags[register.TAG_DECISION]
        number, lml = version.version, register.recorded_score(version, *settings)
    else:
        registered, evaluated = gate_step(
            config, ingested, trained, model_name, root, version, completed
        )
        log.info("[4/5] register: %s v%d; %s", model_name, registered.version, registered.decision)
        decision, number = registered.decision, registered.version
        lml = registered.candidate_log_marginal_likelihood
    publish.fault_point("pipeline_after_gate")
    table, rows, written, note = export_step(config, ingested, model_name, root)
    if written and trained.reused:
        completed.append("exported the champion's latent table (it was missing or out of date)")
    champion = tracking.get_alias(model_name, register.CHAMPION)
    promoted = champion is not None and champion.version == number
    skipped = trained.reused and not completed and not written
    if skipped:
        decision = (
            f"skipped: dataset version {ingested.version[:12]} and config unchanged since "
            f"{model_name} v{number} (MLflow run {trained.run_id}); nothing to retrain "
            "(set pipeline.retrain_on_unchanged=true to retrain anyway)"
        )
        log.info("[3/5] %s", decision)
    for line in completed:
        log.info("completed: %s", line)
    return Outcome(
        evaluated, number, promoted, decision, table, rows, skipped, tuple(completed), lml, note
    )


def stored_version(config: PipelineConfig, root: str, version: str) -> IngestResult:
    """Dataset `data.name` version ``version`` as already stored (published by `aevb ingest`);
    nothing is ingested. DatasetError (one line) when the store does not hold it."""
    manifest = load_manifest(root, config.data.dataset_name, version)
    path = datasets.version_dir(root, manifest.name, manifest.version)
    return IngestResult(manifest.name, manifest.version, path, created=False)


def drift_step(config: PipelineConfig, ingested: IngestResult, model_name: str, root: str):
    """The champion scored on this version vs its own (tasks/drift.py); refused over the
    threshold `pipeline.drift_nats` before anything is trained."""
    p, e = config.pipeline, config.evaluate
    check = (
        _stage(config)(drift.drift_task)
        .submit(
            model_name, ingested.name, ingested.version, root, e.split, p.drift_samples, e.seed,
            e.batch_size,
        )
        .result()
    )  # fmt: skip
    get_run_logger().info("[2/5] drift: %s", check.describe())
    drift.refuse_if_drifted(check, p.drift_nats)
    return check


def run_pipeline(config: PipelineConfig, dataset_version: str | None = None) -> PipelineSummary:
    """The body shared by `pipeline_flow` and `retrain_flow` (must run inside a flow); with
    ``dataset_version``, that stored version of `data.name` is trained instead of ingesting."""
    log = get_run_logger()
    root = resolve_data_root(config.data.data_root)
    if dataset_version:
        ingested, cache_hit = stored_version(config, root, dataset_version), False
        log.info("[1/5] ingest: skipped; stored version %s", ingested.version[:12])
    else:
        log.info("[1/5] ingest: %s -> %s", config.data.source, root)
        ingested, cache_hit = ingest_step(config, root)
    log.info(
        "[1/5] ingest: %s version %s (%s)",
        ingested.name,
        ingested.version[:12],
        "new content" if ingested.created else "unchanged or stored; nothing written",
    )
    model_name = config.register.model_name or default_model_name(ingested.name)
    log.info("[2/5] train: waiting for the retrain lock %s", locks.lock_name(model_name))
    with model_lock(model_name, config.pipeline.lock_timeout_seconds) as waited:
        acquired_at = time.time()
        log.info("[2/5] train: lock acquired after %.1f s", waited)
        publish.fault_point("pipeline_after_lock")
        drifted = drift_step(config, ingested, model_name, root)
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
        how = "reused the finished identical run" if trained.reused else "done"
        log.info("[2/5] train: %s (run %s)", how, trained.run_id)
        if drifted.drift is not None or not trained.reused:
            drift.log_drift(trained.run_id, drifted)
        publish.fault_point("pipeline_after_train")
        outcome = finish_step(config, ingested, trained, model_name, root)
        publish.fault_point("pipeline_after_export")
        released_at = time.time()
    summary = PipelineSummary.of(
        ingested, cache_hit, root, trained, model_name, outcome, waited, acquired_at, released_at,
        drifted, stored=bool(dataset_version),
    )  # fmt: skip
    publish_artifact(summary, trained, outcome.evaluated)
    return summary


@flow(name="aevb-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig, dataset_version: str | None = None) -> PipelineSummary:
    """ingest -> train -> evaluate -> register -> export for one validated config."""
    return run_pipeline(config, dataset_version)


@flow(name="aevb-retrain", log_prints=True)
def retrain_flow(
    config_file: str | None = None,
    overrides: list[str] | None = None,
    dataset_version: str | None = None,
) -> PipelineSummary:
    """Entry point of the deployment: re-read + validate the config, run the pipeline. A run
    triggered by an `aevb.dataset.published` event gets that ``dataset_version`` (flows/serve.py)
    and trains it as stored instead of ingesting `data.source`."""
    config = load_config(config_file, overrides or [])
    if uses_default_runner(config):
        return run_pipeline(config, dataset_version or None)
    return with_task_runner(pipeline_flow, config)(config, dataset_version or None)


def uses_default_runner(config: PipelineConfig) -> bool:
    return config.pipeline.task_runner == "threads" and not config.pipeline.workers


def with_task_runner(flow_obj, config: PipelineConfig):
    """``flow_obj`` running its tasks on the runner named by ``config.pipeline``."""
    p = config.pipeline
    return flow_obj.with_options(
        task_runner=make_task_runner(p.task_runner, p.dask_address or None, p.workers or None)
    )
