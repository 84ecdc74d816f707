"""`aevb deploy --pool NAME --cron "0 3 * * *" | --interval S`: register the scheduled retraining
deployment to a process work pool; `prefect worker start --pool NAME` processes run it
(see flows/serve.py and README "Orchestration")."""

from __future__ import annotations

import argparse
import json

from flows.commands.common import HelpFormatter
from flows.commands.serve import deployment_args, schedule_args

DEFAULT_POOL = "aevb"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="register the scheduled retraining deployment to a process work pool",
        description="Like `aevb serve`, but runs execute in `prefect worker start --pool POOL` "
        "processes (any machine with this project installed) instead of the serving process. "
        "Needs `prefect server start` and PREFECT_API_URL.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--pool",
        default=DEFAULT_POOL,
        help="process work pool (created if missing)",
    )
    schedule_args(p, required=True)
    p.add_argument(
        "--paused", action="store_true", help="register with the schedule paused (resume in the UI)"
    )
    deployment_args(p)
    p.set_defaults(func=run, check=check)


def check(args: argparse.Namespace):
    """As `aevb serve`: the config, overrides and schedule; returns (plan, schedule)."""
    from flows.commands import serve

    return serve.check(args)


def run(args: argparse.Namespace, checked) -> int:
    from flows.serve import build_deployment, check_server, ensure_process_pool

    the_plan, schedule = checked
    url = check_server()
    pool = ensure_process_pool(args.pool)
    deployment = build_deployment(
        args.name, schedule, the_plan, work_pool=args.pool, paused=args.paused
    )
    deployment_id = deployment.apply()
    full_name = f"{deployment.flow_name}/{args.name}"
    when = f"cron {args.cron!r} ({args.timezone})" if args.cron else f"every {args.interval:g} s"
    print(
        f"deployment {full_name} ({deployment_id}) registered on {url}: {when}"
        f"{' (paused)' if args.paused else ''}\n"
        f"  work pool:  {pool}\n"
        f"  parameters: {json.dumps(the_plan.parameters)}\n"
        f"  at most one run at a time; a run due meanwhile: {the_plan.collisions} "
        "(pipeline.schedule_collisions)\n"
        f"  start a worker (this project's environment, same PREFECT_API_URL and MLflow store):\n"
        f"              prefect worker start --pool {args.pool}\n"
        f"  run now:    prefect deployment run '{full_name}'\n"
        f"  UI:         {url.removesuffix('/api')}/deployments"
    )
    return 0
