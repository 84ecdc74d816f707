"""CLI verb `pipeline`: ingest -> train -> evaluate -> register -> export, then where it all went.

Also renders the run's summary as markdown for the Prefect artifact (MLflow links + metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from typing import Any

from flows.commands import config_args, data_root_arg, pipeline_config


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="ingest -> train -> evaluate -> register -> export")
    p.add_argument(
        "source", nargs="?", default=None, help="dataset source (default: data.source, 'digits')"
    )
    p.add_argument("--name", default=None, help="dataset name (default: derived from the source)")
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run_pipeline)


def take_misread_override(args: argparse.Namespace) -> None:
    """`aevb pipeline train.epochs=3`: argparse hands the first KEY=VALUE to the SOURCE slot."""
    src = args.source or ""
    if re.match(r"^[A-Za-z_]+(\.[A-Za-z_]+)?\s*=", src):
        args.overrides = [src, *(getattr(args, "overrides", None) or [])]
        args.source = None


def data_overrides(source: str | None, name: str | None, data_root: str | None) -> list[str]:
    """The `data.*` overrides given by SOURCE, --name and --data-root (the verbs' positional forms)."""
    pairs = (("source", source), ("name", name), ("data_root", data_root))
    return [f"data.{key}={json.dumps(value)}" for key, value in pairs if value]


def run_pipeline(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline_flow, uses_default_runner, with_task_runner
    from tasks.tracking import tracking_uri

    take_misread_override(args)
    extra = data_overrides(args.source, args.name, args.data_root)
    config = pipeline_config(args, extra)  # validated before any work starts
    runner = (
        pipeline_flow if uses_default_runner(config) else with_task_runner(pipeline_flow, config)
    )
    s = runner(config)
    print(format_summary(s, tracking_uri()))
    return 0


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

    url = PREFECT_API_URL.value() or ""
    if url and "127.0.0.1" in url and "/api" in url and not url.endswith(":0/api"):
        return url.removesuffix("/api") + "/artifacts"
    return ""


def format_summary(s: Any, uri: str) -> str:
    """The lines `aevb pipeline` prints: results, then where every output went."""
    ui, start_ui = _ui_base(uri)
    lines = ["", f"aevb pipeline finished: dataset {s.dataset} (version {s.dataset_version[:12]}, "
             f"{'new' if s.dataset_created else 'unchanged'})"]  # fmt: skip
    if s.skipped:
        lines.append(f"  SKIPPED                    {s.decision}")
    else:
        lines += [
            f"  test ELBO                  {s.test_elbo:.3f} nats",
            f"  test log p(x) (IS, K={s.num_importance_samples})  "
            f"{s.test_log_marginal_likelihood:.3f} +- {s.test_log_marginal_likelihood_stderr:.3f} nats",
            f"  gate                       {s.decision}",
        ]
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
        f"  latent table               {s.latent_table}"
        + (f" ({s.latent_rows} rows)" if s.latent_rows else ""),
        f"  Prefect artifact           {s.artifact_key}"
        + (f"  ({_prefect_ui()})" if _prefect_ui() else ""),
        "",
        f"  open the MLflow UI:  {start_ui or ui}",
        f'  read the table:      {_venv_bin("python")} -c "import pandas as pd; print(pd.read_parquet('
        f"'{s.latent_table}', ignore_prefixes=['manifest']).head())\"",
    ]
    return "\n".join(lines)


def summary_markdown(s: Any, trained: Any, evaluated: Any | None) -> str:
    """Markdown for the Prefect artifact: MLflow run and model links, metrics table, outputs."""
    from tasks.tracking import experiment_id, tracking_uri

    uri = tracking_uri()
    ui, start_ui = _ui_base(uri)
    run_link = f"{ui}/#/experiments/{experiment_id(s.experiment)}/runs/{s.run_id}"
    model_link = f"{ui}/#/models/{s.model_name}/versions/{s.model_version}"
    status = "skipped (nothing new)" if s.skipped else ("promoted to champion" if s.promoted
                                                       else "registered as challenger")  # fmt: skip
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
        f"- Latent table: `{s.latent_table}`",
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
            (f"{evaluated.split} log p(x), IS K={evaluated.num_samples} (nats)",
             f"{evaluated.log_marginal_likelihood:.4f} +- {evaluated.log_marginal_likelihood_stderr:.4f}"),
            (f"{evaluated.split} ELBO (nats)", f"{evaluated.elbo:.4f}"),
            (f"{evaluated.split} KL (nats)", f"{evaluated.kl:.4f}"),
            (f"{evaluated.split} active units", str(evaluated.active_units)),
            (f"{evaluated.split} rows", str(evaluated.rows)),
        ]  # fmt: skip
    if s.latent_rows:
        rows.append(("latent table rows", str(s.latent_rows)))
    md += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(md) + "\n"
