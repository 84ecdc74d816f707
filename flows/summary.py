"""What a pipeline run reports: the summary record, the lines `aevb pipeline` prints, and the
Prefect markdown artifact (MLflow links and a metrics table)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What happened after training: evaluated + registered + exported, or skipped."""

    evaluated: Any  # tasks.evaluate.EvaluationSummary, None when no evaluation ran
    model_version: int | None
    promoted: bool
    decision: str
    latent_table: str
    latent_rows: int
    skipped: bool
    completed: tuple[str, ...] = ()  # what this run finished for an earlier, interrupted one
    log_marginal_likelihood: float | None = None  # the gate's score (evaluated now or recorded)
    export_note: str = ""  # why no latent table was exported


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
    skipped: bool  # nothing to do: this data, config and settings are trained, gated, exported
    completed: tuple[str, ...]  # what this run finished for an earlier, interrupted run
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
    export_note: str
    lock_wait_seconds: float
    lock_acquired_at: float
    lock_released_at: float
    artifact_key: str
    plots: tuple[str, ...] = ()  # PNGs in the MLflow run (train's plots/)
    flow_run_id: str = ""  # the Prefect flow run (also tagged on the MLflow run: lineage)
    flow_run_name: str = ""
    flow_run_url: str = ""
    score_kind: str = ""  # what kind of number log p(x) is (tasks/scoring.py `score_kind`)
    bits_per_dim: float | None = None  # beside the nats, where log p(x) is a log-probability
    drift_nats: float | None = None  # the champion's log p(x) lost on this version (tasks/drift)
    drift: str = ""  # the drift in words, or why none was measured
    stored: bool = False  # a stored version was trained (an event-triggered run): no ingest

    @classmethod
    def of(
        cls,
        ingested: Any,
        cache_hit: bool,
        root: str,
        trained: Any,
        model_name: str,
        outcome: Outcome,
        waited: float,
        acquired_at: float,
        released_at: float,
        drifted: Any = None,
        stored: bool = False,
    ) -> PipelineSummary:
        from tasks.logs import prefect_run

        ev, run = outcome.evaluated, prefect_run()
        measured = getattr(drifted, "drift", None)
        return cls(
            dataset=ingested.name,
            dataset_version=ingested.version,
            dataset_path=ingested.path,
            dataset_created=ingested.created,
            ingest_cache_hit=cache_hit,
            data_root=root,
            run_id=trained.run_id,
            experiment=trained.experiment,
            saved_model_dir=trained.saved_model_dir,
            skipped=outcome.skipped,
            completed=outcome.completed,
            test_elbo=None if ev is None else ev.elbo,
            test_log_marginal_likelihood=outcome.log_marginal_likelihood
            if ev is None
            else ev.log_marginal_likelihood,
            test_log_marginal_likelihood_stderr=None
            if ev is None
            else ev.log_marginal_likelihood_stderr,
            num_importance_samples=None if ev is None else ev.num_samples,
            model_name=model_name,
            model_version=outcome.model_version,
            promoted=outcome.promoted,
            decision=outcome.decision,
            latent_table=outcome.latent_table,
            latent_rows=outcome.latent_rows,
            export_note=outcome.export_note,
            lock_wait_seconds=waited,
            lock_acquired_at=acquired_at,
            lock_released_at=released_at,
            artifact_key=artifact_key(model_name),
            plots=tuple(getattr(trained, "plots", ()) or ()),
            score_kind="" if ev is None else ev.score_kind,
            bits_per_dim=None if ev is None else getattr(ev, "bits_per_dim", None),
            flow_run_id=run.get("flow_run_id", ""),
            flow_run_name=run.get("flow_run_name", ""),
            flow_run_url=run.get("flow_run_url", ""),
            drift_nats=None if measured is None else measured.nats,
            drift="" if drifted is None else drifted.describe(),
            stored=stored,
        )


def artifact_key(model_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    name = model_name.lower().removeprefix("aevb-")
    return re.sub(r"[^a-z0-9-]+", "-", f"aevb-{name}-summary").strip("-")


def publish_artifact(summary: PipelineSummary, trained: Any, evaluated: Any | None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=summary_markdown(summary, trained, evaluated),
        key=summary.artifact_key,
        description=f"aevb pipeline: {summary.dataset} -> {summary.model_name}",
    )


def _ui_base(uri: str) -> tuple[str, str]:
    """(base URL of an MLflow UI for this store, how to start one or '')."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/"), ""
    start = f"{_venv_bin('mlflow')} ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000"
    return "http://127.0.0.1:5000", start


def _venv_bin(name: str) -> str:
    """The executable beside this interpreter (the .venv's), so the command works unactivated."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return shlex.quote(path) if os.path.exists(path) else name


def _prefect_ui() -> str:
    from prefect.settings import PREFECT_API_URL

    from tasks.logs import is_temporary_api

    url = PREFECT_API_URL.value() or ""
    if is_temporary_api(url):  # gone when the command ends: no dead link
        return ""
    if url and "127.0.0.1" in url and "/api" in url and not url.endswith(":0/api"):
        return url.removesuffix("/api") + "/artifacts"
    return ""


def format_summary(s: Any, uri: str) -> str:
    """The lines `aevb pipeline` prints: results, then where every output went."""
    ui, start_ui = _ui_base(uri)
    lines = [
        "",
        f"aevb pipeline finished: dataset {s.dataset} (version {s.dataset_version[:12]}, "
        f"{_origin(s)})",
    ]
    lines += _result_lines(s)
    alias = "champion" if s.promoted else "challenger"
    lines += [
        f"  registered model           {s.model_name} version {s.model_version} @{alias}",
        "",
        "where everything went:",
        f"  dataset                    {s.dataset_path}",
        f"  MLflow store               {uri}",
        f"  MLflow run                 {s.run_id} (experiment {s.experiment})",
        f"  model                      models:/{s.model_name}/{s.model_version} "
        f"(load: models:/{s.model_name}@champion)",
        f"  SavedModel + checkpoints   {s.saved_model_dir}",
        f"  latent table               {s.latent_table or s.export_note}"
        + (f" ({s.latent_rows} rows)" if s.latent_rows else ""),
        f"  plots (in the MLflow run)  {_plots_line(s)}",
        f"  Prefect artifact           {s.artifact_key}"
        + (f"  ({_prefect_ui()})" if _prefect_ui() else ""),
        f"  Prefect flow run           {_flow_run_line(s)}",
        "",
        f"  open the MLflow UI:  {start_ui or ui}",
        f'  read the table:      {_venv_bin("python")} -c "import pandas as pd; print(pd.read_parquet('
        f"'{s.latent_table}').head())\"",
    ]
    return "\n".join(lines)


def _origin(s: Any) -> str:
    if getattr(s, "stored", False):
        return "stored, published by ingest"
    return "new" if s.dataset_created else "unchanged"


def _result_lines(s: Any) -> list[str]:
    """SKIPPED when nothing was left to do; else what this run completed and the numbers."""
    if s.skipped:
        return [f"  SKIPPED                    {s.decision}"]
    lines = [f"  completed                  {c}" for c in s.completed]
    if getattr(s, "drift", ""):
        lines.append(f"  drift vs champion          {s.drift}")
    if s.test_elbo is not None:
        lines += [
            f"  test ELBO                  {s.test_elbo:.3f} nats",
            f"  test log p(x) (IS, K={s.num_importance_samples})  "
            f"{s.test_log_marginal_likelihood:.3f} +- {s.test_log_marginal_likelihood_stderr:.3f} nats",
        ]
        if getattr(s, "score_kind", ""):
            bpd = getattr(s, "bits_per_dim", None)
            extra = "" if bpd is None else f", {bpd:.4f} bits/dim"
            lines.append(f"  kind of number             {s.score_kind}{extra}")
    elif s.test_log_marginal_likelihood is not None:
        lines.append(
            f"  test log p(x)              {s.test_log_marginal_likelihood:.3f} nats "
            "(recorded by the earlier run)"
        )
    return [*lines, f"  gate                       {s.decision}"]


def _plots_line(s: Any) -> str:
    if not getattr(s, "plots", ()):
        return "none"
    folder = os.path.dirname(s.plots[0])
    return f"runs:/{s.run_id}/{folder}/ " + ", ".join(os.path.basename(p) for p in s.plots)


def _flow_run_line(s: Any) -> str:
    if not getattr(s, "flow_run_id", ""):
        return "none (not run as a flow)"
    where = s.flow_run_url or "temporary Prefect server: set PREFECT_API_URL to keep runs"
    return f"{s.flow_run_name} ({s.flow_run_id}); {where}"


def summary_markdown(s: Any, trained: Any, evaluated: Any | None) -> str:
    """Markdown for the Prefect artifact: MLflow run and model links, metrics table, outputs."""
    from tasks.tracking import experiment_id, tracking_uri

    uri = tracking_uri()
    ui, start_ui = _ui_base(uri)
    run_link = f"{ui}/#/experiments/{experiment_id(s.experiment)}/runs/{s.run_id}"
    model_link = f"{ui}/#/models/{s.model_name}/versions/{s.model_version}"
    status = (
        "skipped (nothing new)"
        if s.skipped
        else ("promoted to champion" if s.promoted else "registered as challenger")
    )
    md = [
        f"# aevb pipeline: {s.dataset} -> {s.model_name} v{s.model_version}",
        "",
        f"**{status}** - {s.decision}",
        "",
        f"- MLflow run: [{s.run_id}]({run_link}) (experiment `{s.experiment}`)",
        f"- Registered model: [{s.model_name} v{s.model_version}]({model_link})"
        f" - load with `models:/{s.model_name}@champion`",
        f"- Dataset: `{s.dataset}` version `{s.dataset_version}` "
        f"({'new content' if s.dataset_created else 'unchanged'}) at `{s.dataset_path}`",
        f"- Latent table: `{s.latent_table}`"
        if s.latent_table
        else f"- Latent table: {s.export_note}",
        *[f"- Completed for an interrupted run: {c}" for c in s.completed],
        *([f"- Drift vs the champion: {s.drift}"] if s.drift else []),
        "- Plots logged to the run: "
        + (", ".join(f"[`{p}`]({run_link}/artifacts/{p})" for p in s.plots) or "none"),
        f"- This Prefect flow run: `{s.flow_run_name}` (`{s.flow_run_id}`); the MLflow run's tags "
        "`aevb.prefect.*` point back to it",
        f"- Retrain lock waited {s.lock_wait_seconds:.1f} s",
    ]
    if start_ui:
        md.append(f"- The links need a local MLflow UI: `{start_ui}`")
    md += ["", "| metric | value |", "|---|---|"]
    rows: list[tuple[str, str]] = [
        ("epochs completed", str(trained.epochs_completed)),
        ("best epoch", str(trained.best_epoch)),
        ("best valid ELBO (nats)", f"{trained.best_valid_elbo:.4f}"),
    ]
    if evaluated is not None:
        rows += [
            (
                f"{evaluated.split} log p(x), IS K={evaluated.num_samples} (nats)",
                f"{evaluated.log_marginal_likelihood:.4f} +- {evaluated.log_marginal_likelihood_stderr:.4f}",
            ),
            (f"{evaluated.split} ELBO (nats)", f"{evaluated.elbo:.4f}"),
            ("kind of number", evaluated.score_kind or "unknown"),
            (f"{evaluated.split} KL (nats)", f"{evaluated.kl:.4f}"),
            (f"{evaluated.split} active units", str(evaluated.active_units)),
            (f"{evaluated.split} rows", str(evaluated.rows)),
        ]
        if getattr(evaluated, "bits_per_dim", None) is not None:
            rows.append((f"{evaluated.split} bits/dim", f"{evaluated.bits_per_dim:.4f}"))
    if s.latent_rows:
        rows.append(("latent table rows", str(s.latent_rows)))
    md += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(md) + "\n"
