"""The stage flows and the `pipeline` flow: ingest -> train -> evaluate -> register -> export.

Each stage is a Prefect task; stages hand each other names, versions, run ids, paths and URIs,
never arrays. `pipeline_flow` returns a `PipelineSummary` that the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from flows.config import PipelineConfig
from tasks.evaluate import evaluate_task
from tasks.export import export_task
from tasks.ingest import run_ingest_task
from tasks.register import register_task
from tasks.train import train_task


@dataclass(frozen=True)
class PipelineSummary:
    dataset: str
    dataset_version: str
    data_root: str
    run_id: str
    experiment: str
    test_elbo: float
    test_log_marginal_likelihood: float
    test_log_marginal_likelihood_stderr: float
    num_importance_samples: int
    model_name: str
    model_version: int
    promoted: bool
    decision: str
    latent_table: str
    latent_rows: int


@flow(name="aevb-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig) -> PipelineSummary:
    from tasks.datasets import resolve_data_root

    d = config.data
    root = resolve_data_root(d.data_root)
    ingested = run_ingest_task(
        d.source,
        d.dataset_name,
        root,
        split_seed=d.split_seed,
        valid_fraction=d.valid_fraction,
        test_fraction=d.test_fraction,
    )
    trained = train_task(ingested.name, config.model, config.train, root, ingested.version)
    e = config.evaluate
    summary = evaluate_task(
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
    registered = register_task(
        trained.run_id,
        trained.saved_model_dir,
        ingested.name,
        ingested.version,
        summary.log_marginal_likelihood,
        config.register.model_name,
        root,
        e.split,
        e.num_samples,
        e.seed,
    )
    exported = export_task(
        f"models:/{registered.name}@champion",
        ingested.name,
        root,
        ingested.version,
        config.export.splits,
        config.export.batch_size,
    )
    return PipelineSummary(
        dataset=ingested.name,
        dataset_version=ingested.version,
        data_root=root,
        run_id=trained.run_id,
        experiment=trained.experiment,
        test_elbo=summary.elbo,
        test_log_marginal_likelihood=summary.log_marginal_likelihood,
        test_log_marginal_likelihood_stderr=summary.log_marginal_likelihood_stderr,
        num_importance_samples=summary.num_samples,
        model_name=registered.name,
        model_version=registered.version,
        promoted=registered.promoted,
        decision=registered.decision,
        latent_table=exported.path,
        latent_rows=exported.rows,
    )
