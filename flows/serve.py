"""Scheduled retraining as a Prefect deployment of the pipeline on a real server.

    prefect server start --host 127.0.0.1            # in another terminal (or a service)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    aevb serve --cron "0 3 * * *" [--timezone UTC] [--config pipeline.toml] [SOURCE] [KEY=VALUE ...]

The deployment runs `flows.pipeline:retrain_flow` (module entrypoint) with the config file path and
the overrides as parameters; every run re-reads and re-validates the file, so an edited config
takes effect at the next run. Prefect's temporary (ephemeral) API cannot schedule, so serving
needs `PREFECT_API_URL` pointing at a reachable server.
"""

from __future__ import annotations

import os

from models.errors import ConfigError, PipelineError

DEFAULT_DEPLOYMENT = "scheduled-retraining"
TAGS = ["aevb", "retraining"]


def deployment_parameters(config_file: str | None, overrides: list[str]) -> dict:
    """Parameters of every scheduled run: absolute config path + overrides (validated here)."""
    from flows.config import load_config

    config_file = os.path.abspath(config_file) if config_file else None
    load_config(config_file, overrides)  # fail now, not at 03:00
    return {"config_file": config_file, "overrides": overrides}


def make_schedule(cron: str | None, interval: float | None, timezone: str = "UTC"):
    """A validated Prefect schedule; ConfigError naming the setting otherwise."""
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
