"""`aevb serve --cron "0 3 * * *" | --interval S | --on-new-data [DATASET]`: register and serve
the retraining deployment on a Prefect server, on a schedule and/or whenever ingest publishes a
new version of the watched dataset (a Prefect event trigger; see flows/serve.py)."""

from __future__ import annotations

import argparse
import json
import os

from flows.commands.common import (
    HelpFormatter,
    config_args,
    data_overrides,
    data_root_arg,
    finite_float,
    settings_epilog,
    take_misread_override,
)

DEFAULT_DEPLOYMENT = "scheduled-retraining"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="register and serve a retraining deployment (schedule and/or new data) on a "
        "Prefect server",
        description="Run the pipeline on a schedule and/or whenever ingest publishes a new "
        "version of the watched dataset: new data -> retrain -> gate -> champion; "
        "unchanged data and config -> skipped. Needs `prefect server start` and PREFECT_API_URL.",
        epilog=settings_epilog(),
        formatter_class=HelpFormatter,
    )
    schedule_args(p, required=False)
    p.add_argument(
        "--on-new-data",
        nargs="?",
        const="",
        metavar="DATASET",
        help="also (or only) retrain whenever ingest publishes a new version of DATASET "
        "(default: the config's dataset) under the data root: a Prefect event trigger, one run "
        "per version",
    )
    p.add_argument(
        "--register-only",
        action="store_true",
        help="create/update the deployment and exit (runs execute while an `aevb serve` runs)",
    )
    deployment_args(p)
    p.set_defaults(func=run, check=check)


def schedule_args(p: argparse.ArgumentParser, required: bool) -> None:
    """--cron | --interval (one of them), and --timezone: shared with `aevb deploy`."""
    when = p.add_mutually_exclusive_group(required=required)
    when.add_argument("--cron", help='cron expression, e.g. "0 3 * * *" (03:00 every day)')
    when.add_argument("--interval", type=finite_float, help="run every SECONDS seconds")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the cron")


def deployment_args(p: argparse.ArgumentParser) -> None:
    """What the deployment runs: its name, SOURCE, --dataset-name, --data-root, --config and
    overrides; shared with `aevb deploy`."""
    p.add_argument("--name", default=DEFAULT_DEPLOYMENT, help="deployment name")
    p.add_argument(
        "source", nargs="?", default=None, help="dataset source (default: data.source, 'digits')"
    )
    p.add_argument("--dataset-name", default=None, help="dataset name (default: from the source)")
    data_root_arg(p)
    config_args(p)


def check(args: argparse.Namespace):
    """Settings (config, overrides, the schedule) before the server is asked anything; returns
    (plan, schedule or None)."""
    from flows.serve import make_schedule
    from models.errors import ConfigError

    watched = getattr(args, "on_new_data", None)
    if args.cron is None and args.interval is None and watched is None:
        raise ConfigError(
            "say when to retrain: --cron '0 3 * * *', --interval SECONDS and/or --on-new-data "
            "[DATASET]"
        )
    if watched:
        if args.dataset_name not in (None, watched):
            raise ConfigError(
                f"--on-new-data {watched} and --dataset-name {args.dataset_name} name two "
                "datasets; the watched one is the one trained: pass one of them"
            )
        args.dataset_name = watched
    schedule = None
    if args.cron is not None or args.interval is not None:
        schedule = make_schedule(args.cron, args.interval, args.timezone)
    return plan(args), schedule


def plan(args: argparse.Namespace):
    """The deployment's parameters from SOURCE, --dataset-name, --data-root, --config, overrides."""
    from flows.serve import deployment_parameters

    take_misread_override(args)
    root = args.data_root
    if root and "://" not in root:
        root = os.path.abspath(root)  # scheduled runs may start in another folder
    overrides = data_overrides(args.source, args.dataset_name, root)
    overrides += list(getattr(args, "overrides", None) or [])
    return deployment_parameters(args.config, overrides)


def run(args: argparse.Namespace, checked) -> int:
    from flows.serve import build_deployment, check_server

    the_plan, schedule = checked
    params = the_plan.parameters
    url = check_server()
    watch = getattr(args, "on_new_data", None) is not None
    deployment = build_deployment(args.name, schedule, the_plan, on_new_data=watch)
    deployment_id = deployment.apply()
    full_name = f"{deployment.flow_name}/{args.name}"
    when = "no schedule"
    if schedule is not None:
        when = (
            f"cron {args.cron!r} ({args.timezone})" if args.cron else f"every {args.interval:g} s"
        )
    if watch:
        when += (
            f"; on new data: one run per new version of dataset {the_plan.dataset} published "
            f"under {the_plan.data_root} (event aevb.dataset.published)"
        )
    print(
        f"deployment {full_name} ({deployment_id}) registered on {url}: {when}\n"
        f"  parameters: {json.dumps(params)}\n"
        f"  at most one run at a time; a run due meanwhile: {the_plan.collisions} "
        "(pipeline.schedule_collisions)\n"
        f"  run now:    prefect deployment run '{full_name}'\n"
        f"  UI:         {url.removesuffix('/api')}/deployments"
    )
    if args.register_only:
        print("  --register-only: runs execute while `aevb serve` (without it) is running")
        return 0
    from flows.serve import serve_until_signalled

    print(
        "serving; Ctrl-C or SIGTERM stops (in-flight runs cancelled, schedule paused)", flush=True
    )
    name = serve_until_signalled(deployment, say=lambda m: print(f"aevb serve: {m}", flush=True))
    print(f"aevb serve: stopped ({name or 'runner exited'})", flush=True)
    return 0
