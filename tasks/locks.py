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
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from models.errors import PipelineError
from tasks import lock_slots as slots
from tasks.lock_slots import HOLDER_TTL_SECONDS, LOCK_PREFIX, Holder, lock_name
from tasks.logs import logger
from tasks.store import publish

POLL_SECONDS = 2.0  # a waiter tries again (and checks the holder) this often

__all__ = ["HOLDER_TTL_SECONDS", "LockStatus", "lock_name", "release", "retrain_lock", "status"]


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
        while not self._stop.wait(slots.RENEW_SECONDS):
            try:
                with slots.client() as client:
                    self._beat(client)
            except Exception as exc:  # noqa: BLE001 - a server blip; the next beat retries
                logger().warning("retrain lock heartbeat failed (%s); retrying", exc)
            if self.taken_over:
                return

    def _beat(self, client) -> None:
        current = slots.read_holder(client, self.holder.model)
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
        slots.write_holder(client, self.holder)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _release(holder: Holder, heartbeat: _Heartbeat) -> None:
    heartbeat.stop()
    with slots.client() as client:
        current = slots.read_holder(client, holder.model)
        if current is None or current.token != holder.token:
            return  # freed (and maybe re-taken) by someone else: not ours to free any more
        slots.delete_variable(client, slots.holder_variable(holder.model))  # first: no stale record
        slots.free_slot(client, holder.model, time.time() - holder.acquired_at)


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
    deadline, watch = time.monotonic() + timeout_seconds, slots.Watch()
    with slots.client() as client:
        slots.ensure_limit(client, model_name)
        while True:
            if slots.try_acquire(client, model_name):
                me = slots.me(model_name)
                try:
                    slots.write_holder(client, me)
                except BaseException:
                    slots.free_slot(client, model_name, 0.0)
                    raise
                return me
            try:
                stale = watch.stale_reason(client, model_name)
            except Exception as exc:  # noqa: BLE001 - a failed look is no evidence
                logger().warning("retrain lock %s: cannot check the holder (%s)", model_name, exc)
                watch, stale = slots.Watch(), None
            if stale is not None and slots.reclaim(client, model_name, stale[1], stale[0]):
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout_error(
                    model_name, timeout_seconds, slots.read_holder(client, model_name)
                )
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
    holder = slots.read_holder(client, model_name)
    name, taken = lock_name(model_name), (limit.active_slots if limit else 0)
    size = limit.limit if limit else 1
    if taken < size:
        state, detail = "free", "free"
        if holder is not None:
            detail = f"free (a leftover holder record of {holder.describe()})"
        return LockStatus(model_name, name, size, taken, holder, state, detail)
    if holder is None:
        detail = "taken, but no holder record (freed after a while by the next retrain)"
        return LockStatus(model_name, name, size, taken, None, "stale", detail)
    reason = slots.dead_reason(client, holder)
    age = time.time() - holder.beat_at
    if reason is None and holder.host != publish.host_name() and age > HOLDER_TTL_SECONDS:
        reason = f"its last heartbeat was {age:.0f} s ago (by its clock)"
    if reason is not None:
        return LockStatus(model_name, name, size, taken, holder, "stale", f"stale: {reason}")
    detail = f"held by {holder.describe()}; heartbeat {max(age, 0):.0f} s ago"
    return LockStatus(model_name, name, size, taken, holder, "held", detail)


def status(model_name: str | None = None) -> list[LockStatus]:
    """The retrain locks on the current Prefect API (one model, or every `aevb-train-*`)."""
    with slots.client() as client:
        if model_name is not None:
            return [_status_of(client, model_name, slots.read_limit(client, model_name))]
        limits = client.read_global_concurrency_limits(limit=200)
        found = sorted(
            (lim for lim in limits if lim.name.startswith(LOCK_PREFIX)), key=lambda x: x.name
        )
        return [_status_of(client, lim.name[len(LOCK_PREFIX) :], lim) for lim in found]


def release(model_name: str, force: bool = False) -> LockStatus:
    """Free the slot of ``model_name`` if its holder is dead (``force``: whoever holds it)."""
    with slots.client() as client:
        limit = slots.read_limit(client, model_name)
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
        if not slots.reclaim(client, model_name, st.holder, why):
            raise PipelineError(
                f"retrain lock {st.name!r} changed while releasing it; run "
                f"`aevb lock status {model_name}` and try again"
            )
        return _status_of(client, model_name, slots.read_limit(client, model_name))
