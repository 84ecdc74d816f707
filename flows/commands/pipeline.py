"""`aevb pipeline [SOURCE] [KEY=VALUE ...]`: ingest -> train -> evaluate -> register -> export,
then where everything went (flow `aevb-pipeline`)."""

from __future__ import annotations

import argparse

from flows.commands.common import (
    config_args,
    data_overrides,
    data_root_arg,
    pipeline_config,
    take_misread_override,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="ingest -> train -> evaluate -> register -> export")
    p.add_argument(
        "source", nargs="?", default=None, help="dataset source (default: data.source, 'digits')"
    )
    p.add_argument("--name", default=None, help="dataset name (default: derived from the source)")
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline_flow, uses_default_runner, with_task_runner
    from flows.summary import format_summary
    from tasks.tracking import tracking_uri

    take_misread_override(args)
    extra = data_overrides(args.source, args.name, args.data_root)
    config = pipeline_config(args, extra)  # validated before any work starts
    if config.train.strategy == "multi_worker":
        from models.distributed import cluster_info
        from models.errors import ConfigError

        info = cluster_info()
        if not info.is_chief:
            raise ConfigError(
                f"train.strategy='multi_worker': this process is {info.task_type} "
                f"{info.task_index} of {info.num_workers} (TF_CONFIG); run the pipeline on the "
                "chief (index 0) only and `aevb train --dataset NAME` with the same settings here"
            )
    runner = (
        pipeline_flow if uses_default_runner(config) else with_task_runner(pipeline_flow, config)
    )
    print(format_summary(runner(config), tracking_uri()))
    return 0
