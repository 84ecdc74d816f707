"""`aevb pipeline [SOURCE] [KEY=VALUE ...]`: ingest -> train -> evaluate -> register -> export,
then where everything went (flow `aevb-pipeline`)."""

from __future__ import annotations

import argparse

from flows.commands.common import (
    HelpFormatter,
    config_args,
    data_overrides,
    data_root_arg,
    pipeline_config,
    settings_epilog,
    take_misread_override,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="ingest -> train -> evaluate -> register -> export",
        description="ingest -> train -> evaluate -> register (champion gate) -> export, then where "
        "everything went. An unchanged dataset and config is skipped.",
        epilog=settings_epilog(),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        help="built-in name, file or folder (default: data.source, 'digits')",
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
    check_cluster_role(config)
    d = config.data
    formats = {check_source(source, dict(d.options)) for source in d.shards or (d.source,)}
    check_splits(config, fixed_test="idx" in formats)
    return config


def check_cluster_role(config) -> None:
    """train.strategy='multi_worker': the pipeline runs on the chief only (it registers)."""
    if config.train.strategy != "multi_worker":
        return
    from models.distributed import cluster_info
    from models.errors import ConfigError

    info = cluster_info()
    if not info.is_chief:
        raise ConfigError(
            f"train.strategy='multi_worker': this process is {info.task_type} "
            f"{info.task_index} of {info.num_workers} (TF_CONFIG); run the pipeline on the "
            "chief (index 0) only and `aevb train --dataset NAME` with the same settings here"
        )


def check_splits(config, fixed_test: bool) -> None:
    """Splits the pipeline needs and the fractions would leave empty (IDX t10k files bring their
    own test split): refused before anything is ingested."""
    from models.errors import ConfigError

    d, split = config.data, config.evaluate.split
    if d.valid_fraction == 0:
        raise ConfigError(
            "data.valid_fraction=0 leaves no validation split, and the pipeline trains "
            "(early stopping, the resume score): set it > 0, e.g. data.valid_fraction=0.1"
        )
    if split == "test" and d.test_fraction == 0 and not fixed_test:
        raise ConfigError(
            "evaluate.split='test' but data.test_fraction=0 leaves the test split empty: set "
            "data.test_fraction > 0 or evaluate.split='valid'"
        )


def run(args: argparse.Namespace, config) -> int:
    from flows.pipeline import pipeline_flow, uses_default_runner, with_task_runner
    from flows.summary import format_summary
    from tasks.tracking import tracking_uri

    runner = (
        pipeline_flow if uses_default_runner(config) else with_task_runner(pipeline_flow, config)
    )
    print(format_summary(runner(config), tracking_uri()))
    return 0
