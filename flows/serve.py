"""Scheduled retraining as a Prefect deployment of the pipeline on a real server.

    prefect server start --host 127.0.0.1            # in another terminal (or a service)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    aevb serve --cron "0 3 * * *" [--timezone UTC] [--config pipeline.toml] [SOURCE] [KEY=VALUE ...]
    aevb deploy --pool aevb --cron "0 3 * * *" ...   # or: a work-pool deployment, run by
    prefect worker start --pool aevb                 #     `prefect worker start` processes

The deployment runs `flows.pipeline:retrain_flow` (module entrypoint) with the config file path and
the overrides as parameters; every run re-reads and re-validates the file, so an edited config
takes effect at the next run. Prefect's temporary (ephemeral) API cannot schedule, so serving
needs `PREFECT_API_URL` pointing at a reachable server.

Retraining when new data lands (`aevb serve --on-new-data [DATASET]`): ingest emits the Prefect
event `aevb.dataset.published` (resource `aevb.dataset.<name>`, labels `aevb.dataset.version` and
`aevb.data_root`) for every new version it writes; the deployment carries a
`DeploymentEventTrigger` on that event for the watched dataset and data root, so the Prefect
server itself starts a run, with the event's version as the `dataset_version` parameter (trained
as stored, nothing re-ingested). No polling of ours. One version never trains twice: the event's
id is derived from (data root, name, version), and the server's triggers drop ids they have
seen; a run for a version that is already trained, gated and exported is "skipped" by the
pipeline; and the 1-run concurrency limit below holds for triggered runs too.

At most one run of the deployment executes at a time: it carries a concurrency limit of 1 whose
collision strategy is `pipeline.schedule_collisions` ("cancel_new": a run due while another runs
is cancelled at once; "enqueue": it waits for the slot). The server enforces it before any process
starts, for `aevb serve` and for workers alike; the per-model retrain lock of flows/pipeline.py
is only the guard of last resort (manual `aevb pipeline` runs, other deployments).

`aevb serve` stops cleanly on SIGTERM (systemd, `docker stop`, Kubernetes) and SIGINT (Ctrl-C):
in-flight runs are cancelled, the schedule is paused (no Late runs pile up while nothing serves;
the next `aevb serve` resumes it), and the process exits 0 (`serve_until_signalled`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from models.errors import ConfigError, PipelineError

DEFAULT_DEPLOYMENT = "scheduled-retraining"
TAGS = ["aevb", "retraining"]
STOP_SIGNALS = ("SIGTERM", "SIGINT")
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
CRON_EXAMPLE = "e.g. --cron '0 3 * * *' (03:00 every day)"


@dataclass(frozen=True)
class DeploymentPlan:
    """What every scheduled run gets (parameters) and how collisions are handled."""

    parameters: dict
    collisions: str  # pipeline.schedule_collisions
    dataset: str = ""  # the config's dataset name (what --on-new-data watches)
    data_root: str = ""  # resolved at registration: the root whose events count


def deployment_parameters(config_file: str | None, overrides: list[str]) -> DeploymentPlan:
    """Parameters of every scheduled run: absolute config path + overrides (validated here)."""
    from flows.config import load_config

    config_file = os.path.abspath(config_file) if config_file else None
    from tasks.store.roots import resolve_data_root

    config = load_config(config_file, overrides)  # fail now, not at 03:00
    return DeploymentPlan(
        {"config_file": config_file, "overrides": overrides},
        config.pipeline.schedule_collisions,
        config.data.dataset_name,
        resolve_data_root(config.data.data_root),
    )


def new_data_trigger(plan: DeploymentPlan):
    """A run of the deployment per `aevb.dataset.published` event of ``plan.dataset`` under
    ``plan.data_root``, keyed on the version; the run gets that version as `dataset_version`."""
    from datetime import timedelta

    from prefect.events import DeploymentEventTrigger

    from tasks.ingest import EVENT_PUBLISHED

    overrides = [*plan.parameters["overrides"], f"data.data_root={json.dumps(plan.data_root)}"]
    return DeploymentEventTrigger(
        name=f"aevb: retrain when a new {plan.dataset} version is published",
        description=f"{EVENT_PUBLISHED} of dataset {plan.dataset} under {plan.data_root}",
        expect={EVENT_PUBLISHED},
        match={
            "prefect.resource.id": f"aevb.dataset.{plan.dataset}",
            "aevb.data_root": plan.data_root,
        },
        for_each={"aevb.dataset.version"},
        posture="Reactive",
        threshold=1,
        within=timedelta(0),
        parameters={
            **plan.parameters,
            "overrides": overrides,
            "dataset_version": "{{ event.resource['aevb.dataset.version'] }}",
        },
    )


def cron_problem(cron: str) -> str | None:
    """Why ``cron`` is not a usable cron expression, in words; None when it is fine."""
    from datetime import datetime

    from prefect._vendor.croniter import croniter

    fields = cron.split()
    if cron.strip().startswith("@"):
        return None if croniter.is_valid(cron) else f"unknown shorthand {cron.strip()!r}"
    if len(fields) not in (5, 6, 7):
        return f"has {len(fields)} field(s); a cron needs 5: {' '.join(CRON_FIELDS)}"
    for i, (name, value) in enumerate(zip(CRON_FIELDS, fields, strict=False)):
        if value.casefold() in ("h", "r") or value.casefold().startswith(("h(", "r(")):
            return f"{name} field {value!r}: random (R) and hashed (H) values are not supported"
        probe = " ".join(value if j == i else "*" for j in range(5))
        if not croniter.is_valid(probe):
            return f"{name} field {value!r} is not valid (out of range or misspelled)"
    if not croniter.is_valid(cron):
        return "the fields do not combine into a valid expression"
    try:
        croniter(cron, datetime(2000, 1, 1)).get_next(datetime)
    except Exception:  # croniter's CroniterBadDateError: no date ever matches
        return "no date ever matches it (e.g. the 30th of February)"
    return None


def make_schedule(cron: str | None, interval: float | None, timezone: str = "UTC"):
    """A validated Prefect schedule; a one-line ConfigError naming the option otherwise."""
    from zoneinfo import available_timezones

    from prefect.schedules import Cron, Interval

    if timezone not in available_timezones():
        raise ConfigError(
            f"--timezone {timezone!r} is not an IANA time zone; "
            "e.g. --timezone UTC, Europe/Berlin or America/New_York"
        )
    if cron is not None:
        problem = cron_problem(cron)
        if problem:
            raise ConfigError(f"--cron {cron!r} is not a valid schedule: {problem}; {CRON_EXAMPLE}")
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


def concurrency_limit(collisions: str):
    """One run at a time; ``collisions`` ("cancel_new" | "enqueue") says what a second run does."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy[collisions.upper()]
    )


def build_deployment(
    name: str,
    schedule,
    plan: DeploymentPlan,
    work_pool: str | None = None,
    paused: bool = False,
    on_new_data: bool = False,
):
    """The RunnerDeployment of `retrain_flow` (module-path entrypoint, 1-run concurrency limit;
    with ``on_new_data``, the `aevb.dataset.published` trigger of `new_data_trigger`)."""
    from prefect.deployments.runner import EntrypointType

    from flows.pipeline import retrain_flow

    return retrain_flow.to_deployment(
        name=name,
        schedule=schedule,
        parameters=plan.parameters,
        concurrency_limit=concurrency_limit(plan.collisions),
        description="aevb-pipeline scheduled retraining: ingest -> train -> evaluate -> gate -> export",
        tags=TAGS,
        work_pool_name=work_pool,
        paused=paused,
        entrypoint_type=EntrypointType.MODULE_PATH,
        triggers=[new_data_trigger(plan)] if on_new_data else None,
    )


def ensure_process_pool(pool: str) -> str:
    """Create the process work pool ``pool`` unless it exists; returns what happened.

    A pool of another type is refused: its workers would not start `python -m prefect.engine`
    in the project's environment, which the module-path entrypoint needs.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="aevb-pipeline: scheduled retraining in worker processes",
                )
            )
            return f"created process work pool {pool!r}"
    if existing.type != ProcessWorker.type:
        raise PipelineError(
            f"--pool {pool!r} is a {existing.type!r} work pool; aevb deploy needs a "
            f"{ProcessWorker.type!r} pool: pass another --pool name (it is created) or "
            f"`prefect work-pool create NAME --type process`"
        )
    return f"process work pool {pool!r} exists"


def serve_until_signalled(deployment, say=print) -> str:
    """Serve ``deployment`` in the foreground until SIGTERM or SIGINT; returns the signal's name.

    Both signals take the same path: stop polling for runs, cancel every in-flight run (Prefect's
    runner asks the run's process to stop, kills it after a grace period and marks the run
    Cancelled; about 30 s when the run does not exit by itself), pause the deployment's schedule,
    return. A second signal while stopping is only reported. Prefect's own SIGTERM handler
    (`sys.exit` inside the event loop) is replaced: it left runs RUNNING and logged a traceback
    per open connection.
    """
    import asyncio
    import signal

    from prefect.runner import Runner

    received: list[str] = []

    class _Runner(Runner):
        def handle_sigterm(self, *args) -> None:
            """Runner.start installs this for SIGTERM; the loop's handler below gets the signal
            too (through the loop's wake-up fd), so there is nothing left to do here."""

    runner = _Runner(pause_on_shutdown=True)

    def request_stop(name: str) -> None:
        if received:
            say(f"{name} received again; still stopping")
            return
        received.append(name)
        say(f"{name} received: cancelling in-flight runs and pausing the schedule")
        asyncio.get_running_loop().create_task(runner.astop())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for name in STOP_SIGNALS:
            loop.add_signal_handler(getattr(signal, name), request_stop, name)
        await runner.aadd_deployment(deployment)
        await runner.start()

    asyncio.run(main())
    return received[0] if received else ""
