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
    p.set_defaults(func=run, check=check, runs_flows=True)


def check(args: argparse.Namespace):
    """Every setting, then the source (path, files, format, reader options); returns the config.
    The data itself is read and checked by the ingest stage, before anything is written."""
    from tasks.sources import check_source

    take_misread_override(args)
    extra = data_overrides(args.source, args.name, args.data_root)
    config = pipeline_config(args, extra)
    d = config.data
    for source in d.shards or (d.source,):
        check_source(source, dict(d.options))
    return config


def run(args: argparse.Namespace, config) -> int:
    from flows.pipeline import pipeline_flow, uses_default_runner, with_task_runner
    from flows.summary import format_summary
    from tasks.tracking import tracking_uri

    runner = (
        pipeline_flow if uses_default_runner(config) else with_task_runner(pipeline_flow, config)
    )
    print(format_summary(runner(config), tracking_uri()))
    return 0
