"""CLI verb `pipeline`: ingest -> train -> evaluate -> register -> export, then a summary."""

from __future__ import annotations

import argparse
import json
import shlex

from flows.commands import config_args, data_root_arg, pipeline_config  # noqa: F401


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="ingest -> train -> evaluate -> register -> export")
    p.add_argument(
        "source", nargs="?", default=None, help="dataset source (default: data.source, 'digits')"
    )
    p.add_argument("--name", default=None, help="dataset name (default: derived from the source)")
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run_pipeline)


def run_pipeline(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline_flow
    from tasks.tracking import tracking_uri

    extra = []
    if args.source:
        extra.append(f"data.source={json.dumps(args.source)}")
    if args.name:
        extra.append(f"data.name={json.dumps(args.name)}")
    if args.data_root:
        extra.append(f"data.data_root={json.dumps(args.data_root)}")
    config = pipeline_config(args, extra)
    s = pipeline_flow(config)
    print(format_summary(s, tracking_uri()))
    return 0


def format_summary(s, uri: str) -> str:
    alias = "champion" if s.promoted else "challenger"
    ui = (
        f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000"
        if uri.startswith("sqlite:")
        else f"open {uri}"
    )
    return "\n".join(
        [
            "",
            f"aevb pipeline finished: dataset {s.dataset} (version {s.dataset_version[:12]})",
            f"  test ELBO                  {s.test_elbo:.3f} nats",
            f"  test log p(x) (IS, K={s.num_importance_samples})  {s.test_log_marginal_likelihood:.3f} "
            f"+- {s.test_log_marginal_likelihood_stderr:.3f} nats",
            f"  registered model           {s.model_name} version {s.model_version} @{alias}",
            f"  gate                       {s.decision}",
            f"  MLflow run                 {s.run_id} (experiment {s.experiment})",
            f"  latent table               {s.latent_table} ({s.latent_rows} rows)",
            "",
            f"  open the MLflow UI:  {ui}",
            f"  read the table:      python -c \"import pandas as pd; print(pd.read_parquet('{s.latent_table}', ignore_prefixes=['manifest']).head())\"",
        ]
    )
