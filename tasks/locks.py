"""The per-model retrain lock: the one slot of the Prefect global concurrency limit
`aevb-train-<model>`, plus a holder record that lets the next run free the slot of a dead holder.

Why not Prefect's concurrency lease alone: a leased slot is freed by the server's repossessor once
the lease expires, but that service does not run in Prefect's temporary servers (no
PREFECT_API_URL: every `aevb` process starts its own, on one shared database), and the default
lease storage lives in the server's memory, so a restart of `prefect server start` forgets every
lease while the database keeps the slot taken. Either way a killed retrain held the slot forever.
Mixing the server's expiry with our own freeing could free a slot twice, so the slot is taken
without a lease and freed only here:

- the holder writes who it is into the Prefect variable `aevb_lock_<model>_<hash>`: host, pid,
  process start time, flow run id, and a heartbeat counter it bumps every `RENEW_SECONDS`;
- a waiting run checks the holder between attempts (every `POLL_SECONDS`) and frees the slot when
  the holder is dead: same host and its process is gone (or the pid now belongs to another
  process), or its flow run is in a final state -> at the next check; on another host, its
  heartbeat did not move for `HOLDER_TTL_SECONDS` of the waiter's own clock; a full slot with no
  holder record at all (killed between taking the slot and writing the record) -> after
  `ORPHAN_SECONDS`;
- freeing happens under a short mutex (the variable `<record>_reclaim`, whose creation is atomic),
  with the record re-read inside it, so two waiters never free one slot twice.

The variables and the slot count live in the Prefect database, so all of this survives a server
restart. `aevb lock status|release` shows and frees a slot by hand (tasks.locks.status/release).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import os
import random
import re
import threading
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
POLL_SECONDS = 2.0  # a waiter tries again (and checks the holder) this often
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


def _me(model_name: str) -> Holder:
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


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _read_holder(client, model_name: str) -> Holder | None:
    variable = client.read_variable_by_name(holder_variable(model_name))
    return None if variable is None else Holder.parse(variable.value)


def _write_holder(client, holder: Holder) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name, value = holder_variable(holder.model), dataclasses.asdict(holder)
    try:
        client.create_variable(VariableCreate(name=name, value=value, tags=["aevb-lock"]))
    except ObjectAlreadyExists:  # a dead holder's record (we hold the only slot now)
        client.update_variable(VariableUpdate(name=name, value=value))


def _delete_variable(client, name: str) -> None:
    from prefect.exceptions import ObjectNotFound

    with contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(name)


def _limit(client, model_name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_global_concurrency_limit_by_name(lock_name(model_name))
    except ObjectNotFound:
        return None


def _ensure_limit(client, model_name: str) -> None:
    from prefect.exceptions import ObjectAlreadyExists

    try:
        client.upsert_global_concurrency_limit_by_name(lock_name(model_name), limit=1)
    except ObjectAlreadyExists:
        pass  # created concurrently by another run


def _try_acquire(client, model_name: str) -> bool:
    import httpx

    try:
        client.increment_concurrency_slots([lock_name(model_name)], 1, "concurrency")
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:  # Locked: the slot is taken
            return False
        raise
    return True


def _free_slot(client, model_name: str, occupied_seconds: float) -> None:
    client.release_concurrency_slots([lock_name(model_name)], 1, max(occupied_seconds, 0.0))


# ----------------------------------------------------------------------------- liveness


def _flow_run_final(client, flow_run_id: str) -> bool:
    if not flow_run_id:
        return False
    try:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
    except Exception:  # noqa: BLE001 - deleted run, or not readable: no evidence either way
        return False
    return run.state is not None and run.state.is_final()


def dead_reason(client, holder: Holder) -> str | None:
    """Why ``holder`` is certainly gone, or None. On another host only a final flow run is
    certain here; a stopped heartbeat needs watching over time (see `_Watch`)."""
    if holder.host == publish.host_name() and not publish.process_alive(holder.pid, holder.start):
        return f"its process (pid {holder.pid} on this host) is gone"
    if _flow_run_final(client, holder.flow_run_id):
        return f"its flow run {holder.flow_run_id} has ended"
    return None


class _Watch:
    """A waiter's view of the holder over time: heartbeat progress and orphaned slots."""

    def __init__(self) -> None:
        self.seen: tuple[str, int] | None = None
        self.since = time.monotonic()
        self.orphan_since: float | None = None

    def stale_reason(self, client, model_name: str) -> tuple[str, Holder | None] | None:
        holder = _read_holder(client, model_name)
        now = time.monotonic()
        if holder is None:
            limit = _limit(client, model_name)
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
def _reclaim_mutex(client, model_name: str) -> Iterator[bool]:
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
            _delete_variable(client, name)  # its reclaimer was killed; the next attempt proceeds
        yield False
        return
    try:
        yield True
    finally:
        _delete_variable(client, name)


def reclaim(client, model_name: str, expected: Holder | None, reason: str) -> bool:
    """Free the slot held by ``expected`` (None: an orphaned slot with no record); True if freed.
    The record is re-read under the mutex: a changed holder means someone else got there first."""
    with _reclaim_mutex(client, model_name) as mine:
        if not mine:
            return False
        current = _read_holder(client, model_name)
        if (current and current.token) != (expected and expected.token):
            return False
        limit = _limit(client, model_name)
        if limit is None or limit.active_slots == 0:
            return False
        if current is not None:
            _delete_variable(client, holder_variable(model_name))
        start = expected.acquired_at if expected else time.time()
        _free_slot(client, model_name, time.time() - start)
    who = expected.describe() if expected else "unknown holder"
    logger().warning(
        "retrain lock %s: freed the slot of %s: %s", lock_name(model_name), who, reason
    )
    return True


# ----------------------------------------------------------------------------- holding


class _Heartbeat:
    """Bumps the holder record every RENEW_SECONDS on a daemon thread; notices a takeover."""

    def __init__(self, holder: Holder):
        self.holder = holder
        self.taken_over = False
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the caller's Prefect settings (API URL)
        self._thread = threading.Thread(
            target=lambda: context.run(self._loop),
            daemon=True,
            name=f"aevb-lock-heartbeat-{holder.model}",
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                with _client() as client:
                    self._beat(client)
            except Exception as exc:  # noqa: BLE001 - a server blip; the next beat retries
                logger().warning("retrain lock heartbeat failed (%s); retrying", exc)
            if self.taken_over:
                return

    def _beat(self, client) -> None:
        current = _read_holder(client, self.holder.model)
        if current is None or current.token != self.holder.token:
            self.taken_over = True
            logger().error(
                "retrain lock %s was freed by someone else (`aevb lock release --force`?); "
                "another retrain of %s may now run at the same time",
                lock_name(self.holder.model),
                self.holder.model,
            )
            return
        self.holder = dataclasses.replace(
            self.holder, beat=self.holder.beat + 1, beat_at=time.time()
        )
        _write_holder(client, self.holder)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _release(holder: Holder, heartbeat: _Heartbeat) -> None:
    heartbeat.stop()
    with _client() as client:
        current = _read_holder(client, holder.model)
        if current is None or current.token != holder.token:
            return  # freed (and maybe re-taken) by someone else: not ours to free any more
        _delete_variable(client, holder_variable(holder.model))  # first: no stale record
        _free_slot(client, holder.model, time.time() - holder.acquired_at)


def _timeout_error(model_name: str, timeout_seconds: float, holder: Holder | None) -> PipelineError:
    name = lock_name(model_name)
    held = f" (held by {holder.describe()})" if holder else ""
    return PipelineError(
        f"another retrain of model {model_name!r} holds the concurrency limit {name!r}{held}; "
        f"gave up after waiting {timeout_seconds:g} s (pipeline.lock_timeout_seconds). "
        f"Retry later, or inspect it with `aevb lock status {model_name}`"
    )


def _wait_for_slot(model_name: str, timeout_seconds: float) -> Holder:
    """Take the slot (freeing a dead holder's on the way) and write our holder record."""
    deadline, watch = time.monotonic() + timeout_seconds, _Watch()
    with _client() as client:
        _ensure_limit(client, model_name)
        while True:
            if _try_acquire(client, model_name):
                me = _me(model_name)
                try:
                    _write_holder(client, me)
                except BaseException:
                    _free_slot(client, model_name, 0.0)
                    raise
                return me
            try:
                stale = watch.stale_reason(client, model_name)
            except Exception as exc:  # noqa: BLE001 - a failed look is no evidence
                logger().warning("retrain lock %s: cannot check the holder (%s)", model_name, exc)
                watch, stale = _Watch(), None
            if stale is not None and reclaim(client, model_name, stale[1], stale[0]):
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout_error(model_name, timeout_seconds, _read_holder(client, model_name))
            time.sleep(min(left, POLL_SECONDS * random.uniform(0.75, 1.25)))


@contextlib.contextmanager
def retrain_lock(model_name: str, timeout_seconds: float) -> Iterator[float]:
    """Hold the retrain slot of ``model_name``; yields the seconds waited for it.

    The limit is created (1 slot) on first use on whichever Prefect API the run talks to. Waiting
    longer than ``timeout_seconds`` raises a one-line PipelineError naming the holder.
    """
    start = time.monotonic()
    holder = _wait_for_slot(model_name, timeout_seconds)
    heartbeat = _Heartbeat(holder)
    try:
        yield time.monotonic() - start
    finally:
        _release(holder, heartbeat)


# ----------------------------------------------------------------------------- by hand


@dataclass(frozen=True)
class LockStatus:
    model: str
    name: str
    limit: int
    active_slots: int
    holder: Holder | None
    state: str  # "free" | "held" | "stale"
    detail: str


def _status_of(client, model_name: str, limit) -> LockStatus:
    holder = _read_holder(client, model_name)
    name, slots = lock_name(model_name), (limit.active_slots if limit else 0)
    size = limit.limit if limit else 1
    if slots < size:
        state, detail = "free", "free"
        if holder is not None:
            detail = f"free (a leftover holder record of {holder.describe()})"
        return LockStatus(model_name, name, size, slots, holder, state, detail)
    if holder is None:
        detail = "taken, but no holder record (freed after a while by the next retrain)"
        return LockStatus(model_name, name, size, slots, None, "stale", detail)
    reason = dead_reason(client, holder)
    age = time.time() - holder.beat_at
    if reason is None and holder.host != publish.host_name() and age > HOLDER_TTL_SECONDS:
        reason = f"its last heartbeat was {age:.0f} s ago (by its clock)"
    if reason is not None:
        return LockStatus(model_name, name, size, slots, holder, "stale", f"stale: {reason}")
    detail = f"held by {holder.describe()}; heartbeat {max(age, 0):.0f} s ago"
    return LockStatus(model_name, name, size, slots, holder, "held", detail)


def status(model_name: str | None = None) -> list[LockStatus]:
    """The retrain locks on the current Prefect API (one model, or every `aevb-train-*`)."""
    with _client() as client:
        if model_name is not None:
            return [_status_of(client, model_name, _limit(client, model_name))]
        limits = client.read_global_concurrency_limits(limit=200)
        found = sorted(
            (lim for lim in limits if lim.name.startswith(LOCK_PREFIX)), key=lambda x: x.name
        )
        return [_status_of(client, lim.name[len(LOCK_PREFIX) :], lim) for lim in found]


def release(model_name: str, force: bool = False) -> LockStatus:
    """Free the slot of ``model_name`` if its holder is dead (``force``: whoever holds it)."""
    with _client() as client:
        limit = _limit(client, model_name)
        if limit is None:
            raise PipelineError(
                f"no retrain lock {lock_name(model_name)!r} on this Prefect API; "
                "see `aevb lock status` for the existing ones"
            )
        st = _status_of(client, model_name, limit)
        if st.state == "free":
            return st
        if st.state == "held" and not force:
            raise PipelineError(
                f"retrain lock {st.name!r} is {st.detail}; it is alive, so it is not released "
                f"(add --force if you know that process is gone)"
            )
        why = "released by hand (aevb lock release)" if st.state == "held" else st.detail
        if not reclaim(client, model_name, st.holder, why):
            raise PipelineError(
                f"retrain lock {st.name!r} changed while releasing it; run "
                f"`aevb lock status {model_name}` and try again"
            )
        return _status_of(client, model_name, _limit(client, model_name))
