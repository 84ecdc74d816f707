"""`aevb lock status [MODEL]` and `aevb lock release MODEL [--force]`: the per-model retrain locks
(tasks/locks.py) on the Prefect API this process talks to."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lock",
        help="show or free the per-model retrain locks",
        description="aevb lock status [MODEL] | release MODEL [--force]. A retrain holds the "
        "one-slot Prefect concurrency limit aevb-train-<MODEL>; a slot whose holder died is "
        "freed by the next retrain on its own, `release` frees it now. Talks to $PREFECT_API_URL "
        "(default: Prefect's temporary server on the local database).",
    )
    p.add_argument("action", choices=["status", "release"])
    p.add_argument("model", nargs="?", help="registered model name, e.g. aevb-digits")
    p.add_argument(
        "--force",
        action="store_true",
        help="release: free the slot even though its holder looks alive",
    )
    p.add_argument("--json", action="store_true", help="status: one JSON object per lock")
    # it talks to the Prefect API: without PREFECT_API_URL, through the guarded temporary server
    p.set_defaults(func=run, check=check, runs_flows=True)


def check(args: argparse.Namespace) -> None:
    """Settings first: `release` needs the model, before any server starts."""
    from models.errors import PipelineError

    if args.action == "release" and not args.model:
        raise PipelineError("aevb lock release MODEL: give the MODEL whose lock to free")


def run(args: argparse.Namespace, checked: None = None) -> int:
    from tasks import locks

    if args.action == "status":
        found = locks.status(args.model)
        if not found:
            print("no retrain locks on this Prefect API")
        for st in found:
            print(json.dumps(_as_dict(st)) if args.json else _describe(st))
        return 0
    before = locks.status(args.model)[0]
    after = locks.release(args.model, force=args.force)
    if before.state == "free":
        print(f"{before.name}: already free; nothing released")
    else:
        print(f"{before.name}: released ({before.detail}); now {after.detail}")
    return 0


def _describe(st) -> str:
    return f"{st.name}  {st.active_slots}/{st.limit}  {st.detail}"


def _as_dict(st) -> dict:
    holder = None
    if st.holder is not None:
        h = st.holder
        holder = {
            "host": h.host,
            "pid": h.pid,
            "flow_run_id": h.flow_run_id or None,
            "acquired_at": h.acquired_at,
            "heartbeat_at": h.beat_at,
        }
    return {
        "model": st.model,
        "limit": st.name,
        "active_slots": st.active_slots,
        "slots": st.limit,
        "state": st.state,
        "detail": st.detail,
        "holder": holder,
    }
