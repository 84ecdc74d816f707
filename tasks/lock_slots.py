"""The retrain lock's parts (tasks/locks.py puts them together): the slot of the Prefect global
concurrency limit `aevb-train-<model>`, the holder record (a Prefect variable), the liveness rules
and `reclaim`, which frees a dead holder's slot under a mutex."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from models.errors import PipelineError
from tasks.logs import logger
from tasks.store import publish

LOCK_PREFIX = "aevb-train-"
RENEW_SECONDS = 15.0  # the holder's heartbeat period
HOLDER_TTL_SECONDS = 90.0  # a holder on another host whose heartbeat stood still this long is dead
ORPHAN_SECONDS = 90.0  # a full slot without a holder record for this long is orphaned
RECLAIM_STALE_SECONDS = 30.0  # a reclaim mutex older than this belongs to a killed reclaimer


def lock_name(model_name: str) -> str:
    return LOCK_PREFIX + model_name


def holder_variable(model_name: str) -> str:
    """Prefect variable names allow lowercase letters, digits, '-' and '_': keep it readable and
    unique (model names may hold capitals and dots)."""
    slug = re.sub(r"[^a-z0-9_-]+", "_", model_name.lower())[:80]
    return f"aevb_lock_{slug}_{hashlib.sha256(model_name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Holder:
    """Who holds a retrain slot (the value of the holder variable)."""

    token: str
    model: str
    host: str
    pid: int
    start: str  # process start time (clock ticks since boot), tells pid reuse apart
    flow_run_id: str
    acquired_at: float
    beat: int = 0
    beat_at: float = 0.0

    def describe(self) -> str:
        run = f", flow run {self.flow_run_id}" if self.flow_run_id else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        return f"pid {self.pid} on {self.host}{run}, since {since}"

    @classmethod
    def parse(cls, value: Any) -> Holder | None:
        if not isinstance(value, dict):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in value.items() if k in names})
        except TypeError:
            return None


def me(model_name: str) -> Holder:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else ""
    pid = os.getpid()
    now = time.time()
    return Holder(
        uuid.uuid4().hex, model_name, publish.host_name(), pid, publish.process_start(pid),
        run, now, 0, now,
    )  # fmt: skip


# ----------------------------------------------------------------------------- Prefect calls


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def read_holder(client, model_name: str) -> Holder | None:
    variable = client.read_variable_by_name(holder_variable(model_name))
    return None if variable is None else Holder.parse(variable.value)


def write_holder(client, holder: Holder) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name, value = holder_variable(holder.model), dataclasses.asdict(holder)
    try:
        client.create_variable(VariableCreate(name=name, value=value, tags=["aevb-lock"]))
    except ObjectAlreadyExists:  # a dead holder's record (we hold the only slot now)
        client.update_variable(VariableUpdate(name=name, value=value))


def delete_variable(client, name: str) -> None:
    from prefect.exceptions import ObjectNotFound

    with contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(name)


def read_limit(client, model_name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_global_concurrency_limit_by_name(lock_name(model_name))
    except ObjectNotFound:
        return None


def ensure_limit(client, model_name: str) -> None:
    from prefect.exceptions import ObjectAlreadyExists

    name = lock_name(model_name)
    try:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    except ObjectAlreadyExists:
        pass  # created concurrently by another run
    limit = read_limit(client, model_name)
    if limit is not None and not limit.active:  # the server would grant every request
        raise PipelineError(
            f"the concurrency limit {name!r} is inactive, so it cannot keep two retrains of "
            f"{model_name!r} apart; enable it: `prefect gcl enable {name}`"
        )


def try_acquire(client, model_name: str) -> bool:
    import httpx

    name = lock_name(model_name)
    try:
        response = client.increment_concurrency_slots([name], 1, "concurrency")
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:  # Locked: the slot is taken
            return False
        raise
    if not response.json():  # no such limit (deleted meanwhile): nothing was taken
        raise PipelineError(f"the concurrency limit {name!r} does not exist any more; run again")
    return True


def free_slot(client, model_name: str, occupied_seconds: float) -> None:
    client.release_concurrency_slots([lock_name(model_name)], 1, max(occupied_seconds, 0.0))


# ----------------------------------------------------------------------------- liveness


def flow_run_final(client, flow_run_id: str) -> bool:
    if not flow_run_id:
        return False
    try:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
    except Exception:  # noqa: BLE001 - deleted run, or not readable: no evidence either way
        return False
    return run.state is not None and run.state.is_final()


def dead_reason(client, holder: Holder) -> str | None:
    """Why ``holder`` is certainly gone, or None. On another host only a final flow run is
    certain here; a stopped heartbeat needs watching over time (see `Watch`)."""
    if holder.host == publish.host_name() and not publish.process_alive(holder.pid, holder.start):
        return f"its process (pid {holder.pid} on this host) is gone"
    if flow_run_final(client, holder.flow_run_id):
        return f"its flow run {holder.flow_run_id} has ended"
    return None


class Watch:
    """A waiter's view of the holder over time: heartbeat progress and orphaned slots."""

    def __init__(self) -> None:
        self.seen: tuple[str, int] | None = None
        self.since = time.monotonic()
        self.orphan_since: float | None = None

    def stale_reason(self, client, model_name: str) -> tuple[str, Holder | None] | None:
        holder = read_holder(client, model_name)
        now = time.monotonic()
        if holder is None:
            limit = read_limit(client, model_name)
            if limit is None or limit.active_slots < limit.limit:
                self.orphan_since = None
                return None
            self.orphan_since = self.orphan_since or now
            if now - self.orphan_since >= ORPHAN_SECONDS:
                return f"the slot was taken {ORPHAN_SECONDS:g} s ago with no holder record", None
            return None
        self.orphan_since = None
        reason = dead_reason(client, holder)
        if reason:
            return reason, holder
        if (holder.token, holder.beat) != self.seen:
            self.seen, self.since = (holder.token, holder.beat), now
        elif holder.host != publish.host_name() and now - self.since >= HOLDER_TTL_SECONDS:
            return f"its heartbeat stopped {HOLDER_TTL_SECONDS:g} s ago", holder
        return None


@contextlib.contextmanager
def reclaim_mutex(client, model_name: str) -> Iterator[bool]:
    """Yields True when this process holds the reclaim mutex (False: another one is reclaiming)."""
    from prefect.client.schemas.actions import VariableCreate
    from prefect.exceptions import ObjectAlreadyExists

    name = holder_variable(model_name) + "_reclaim"
    try:
        client.create_variable(VariableCreate(name=name, value={"at": time.time()}))
    except ObjectAlreadyExists:
        held = client.read_variable_by_name(name)
        at = held.value.get("at", 0) if held is not None and isinstance(held.value, dict) else 0
        if time.time() - float(at) > RECLAIM_STALE_SECONDS:
            delete_variable(client, name)  # its reclaimer was killed; the next attempt proceeds
        yield False
        return
    try:
        yield True
    finally:
        delete_variable(client, name)


def reclaim(client, model_name: str, expected: Holder | None, reason: str) -> bool:
    """Free the slot held by ``expected`` (None: an orphaned slot with no record); True if freed.
    The record is re-read under the mutex: a changed holder means someone else got there first."""
    with reclaim_mutex(client, model_name) as mine:
        if not mine:
            return False
        current = read_holder(client, model_name)
        if (current and current.token) != (expected and expected.token):
            return False
        limit = read_limit(client, model_name)
        if limit is None or limit.active_slots == 0:
            return False
        if current is not None:
            delete_variable(client, holder_variable(model_name))
        start = expected.acquired_at if expected else time.time()
        free_slot(client, model_name, time.time() - start)
    who = expected.describe() if expected else "unknown holder"
    logger().warning(
        "retrain lock %s: freed the slot of %s: %s", lock_name(model_name), who, reason
    )
    return True
