"""CLI verb `serve`: scheduled retraining as a Prefect deployment of the pipeline on a real server.

    prefect server start --host 127.0.0.1            # in another terminal (or a service)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    aevb serve --cron "0 3 * * *" [--timezone UTC] [--config pipeline.toml] [SOURCE] [KEY=VALUE ...]
    aevb serve --interval 3600 ...
    aevb serve --cron "0 3 * * *" --register-only   # create/update the deployment, then exit

The deployment runs `flows.pipeline:retrain_flow` (module entrypoint) with the config file path and
the overrides as parameters; every run re-reads and re-validates the file, so an edited config
takes effect at the next run. The config is validated here too, before anything is registered.
Prefect's temporary (ephemeral) API cannot schedule, so `serve` refuses to run without
`PREFECT_API_URL` pointing at a reachable server.
"""

from __future__ import annotations

import argparse
import json
import os

from flows.commands import config_args, data_root_arg
from models.errors import ConfigError, PipelineError

DEFAULT_DEPLOYMENT = "scheduled-retraining"
TAGS = ["aevb", "retraining"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="register and serve a scheduled retraining deployment on a Prefect server",
        description="Run the pipeline on a schedule: new data -> retrain -> gate -> champion; "
        "unchanged data and config -> skipped. Needs `prefect server start` and PREFECT_API_URL.",
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron expression, e.g. "0 3 * * *" (03:00 every day)')
    when.add_argument("--interval", type=float, help="run every SECONDS seconds")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the cron (default UTC)")
    p.add_argument("--name", default=DEFAULT_DEPLOYMENT, help="deployment name")
    p.add_argument(
        "--register-only",
        action="store_true",
        help="create/update the deployment and exit (runs execute while an `aevb serve` runs)",
    )
    p.add_argument(
        "source", nargs="?", default=None, help="dataset source (default: data.source, 'digits')"
    )
    p.add_argument("--dataset-name", default=None, help="dataset name (default: from the source)")
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run_serve)


def deployment_parameters(args: argparse.Namespace) -> dict:
    """Parameters of every scheduled run: absolute config path + overrides (validated here)."""
    from flows.config import load_config
    from flows.pipeline_cli import data_overrides, take_misread_override

    take_misread_override(args)
    root = args.data_root
    if root and "://" not in root:
        root = os.path.abspath(root)  # scheduled runs may start in another folder
    overrides = data_overrides(args.source, args.dataset_name, root)
    overrides += list(getattr(args, "overrides", None) or [])
    config_file = os.path.abspath(args.config) if args.config else None
    load_config(config_file, overrides)  # fail now, not at 03:00
    return {"config_file": config_file, "overrides": overrides}


def make_schedule(cron: str | None, interval: float | None, timezone: str = "UTC"):
    """A validated Prefect schedule; ConfigError naming the flag otherwise."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron, Interval

    if cron is not None:
        try:
            CronSchedule(cron=cron, timezone=timezone)
        except ValueError as exc:
            raise ConfigError(
                f"--cron {cron!r} / --timezone {timezone!r}: not a valid schedule "
                f"({str(exc).splitlines()[-1].strip()}); e.g. --cron '0 3 * * *' --timezone UTC"
            ) from exc
        return Cron(cron, timezone=timezone)
    if interval is None or interval <= 0:
        raise ConfigError(f"--interval {interval!r}: give a number of seconds > 0")
    return Interval(interval, timezone=timezone)


def check_server(api_url: str | None = None, timeout: float = 10.0) -> str:
    """The API URL of a reachable Prefect server; PipelineError with the fix otherwise."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = (api_url or PREFECT_API_URL.value() or "").rstrip("/")
    if not url:
        raise PipelineError(
            "aevb serve needs a Prefect server (the temporary in-process API cannot schedule): "
            "run `prefect server start --host 127.0.0.1` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    try:
        response = httpx.get(f"{url}/health", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise PipelineError(
            f"PREFECT_API_URL={url}: no healthy Prefect server there ({exc.__class__.__name__}); "
            "start it with `prefect server start --host 127.0.0.1` or fix PREFECT_API_URL"
        ) from exc
    return url


def build_deployment(name: str, schedule, parameters: dict):
    """The RunnerDeployment of `retrain_flow` with a module-path entrypoint."""
    from prefect.deployments.runner import EntrypointType

    from flows.pipeline import retrain_flow

    return retrain_flow.to_deployment(
        name=name,
        schedule=schedule,
        parameters=parameters,
        description="aevb-pipeline scheduled retraining: ingest -> train -> evaluate -> gate -> export",
        tags=TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def run_serve(args: argparse.Namespace) -> int:
    parameters = deployment_parameters(args)
    schedule = make_schedule(args.cron, args.interval, args.timezone)
    url = check_server()
    deployment = build_deployment(args.name, schedule, parameters)
    deployment_id = deployment.apply()
    full_name = f"{deployment.flow_name}/{args.name}"
    when = f"cron {args.cron!r} ({args.timezone})" if args.cron else f"every {args.interval:g} s"
    print(
        f"deployment {full_name} ({deployment_id}) registered on {url}: {when}\n"
        f"  parameters: {json.dumps(parameters)}\n"
        f"  run now:    prefect deployment run '{full_name}'\n"
        f"  UI:         {url.removesuffix('/api')}/deployments"
    )
    if args.register_only:
        print("  --register-only: runs execute while `aevb serve` (without it) is running")
        return 0
    from prefect import serve

    print("serving; Ctrl-C stops (the schedule is paused on shutdown)")
    serve(deployment, print_starting_message=False)
    return 0
