"""`aevb models`: list registered models, show a model's versions, promote a version by hand."""

from __future__ import annotations

import argparse
import json

from flows.commands.common import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list registered models, show versions, promote a version",
        description="aevb models list | show NAME [VERSION] | promote NAME VERSION [--alias A]. "
        "Reads the MLflow registry at $MLFLOW_TRACKING_URI (default: the embedded SQLite store; "
        "`aevb config show` says where).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("action", choices=["list", "show", "promote"], help="what to do")
    p.add_argument("name", nargs="?", help="registered model name, e.g. aevb-digits")
    p.add_argument("version", nargs="?", type=int, help="model version number")
    p.add_argument("--alias", default="champion", help="alias to move (promote)")
    p.add_argument("--json", action="store_true", help="show: one JSON object per version")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, checked: None = None) -> int:
    from models.errors import ModelError
    from tasks import tracking  # not tasks.register (Prefect) unless a verb needs it

    if args.action == "list":
        names = tracking.list_registered_models()
        if not names:
            print(f"no registered models at {tracking.tracking_uri()}")
        for name in names:
            versions = tracking.list_versions(name)
            print(f"{name}: {len(versions)} version(s); {_alias_summary(versions)}")
        return 0
    if not args.name:
        raise ModelError(f"aevb models {args.action}: give the registered model NAME")
    if args.action == "show":
        versions = tracking.list_versions(args.name)
        if not versions:
            raise ModelError(
                f"registered model {args.name!r} not found at {tracking.tracking_uri()}; "
                "`aevb models list` shows what exists"
            )
        for v in versions:
            if args.version is None or v.version == args.version:
                print(json.dumps(_as_dict(v)) if args.json else _describe(v))
        return 0
    if args.version is None:
        raise ModelError("aevb models promote NAME VERSION: give the VERSION to promote")
    from tasks import register

    previous = register.promote(args.name, args.version, args.alias)
    was = f" (was v{previous.version})" if previous else ""
    print(f"{args.name} v{args.version} is now @{args.alias}{was}")
    return 0


def _alias_summary(versions) -> str:
    by_alias = {a: v.version for v in versions for a in v.aliases}
    return ", ".join(f"{a} v{n}" for a, n in sorted(by_alias.items())) or "no aliases"


def _as_dict(v) -> dict:
    return {"version": v.version, "aliases": list(v.aliases), "run_id": v.run_id, "tags": v.tags}


def _describe(v) -> str:
    from tasks import register as R

    aliases = " ".join(f"@{a}" for a in v.aliases)
    lml = v.tags.get(R.TAG_LML, "?")
    data = f"{v.tags.get(R.TAG_DATASET, '?')}@{v.tags.get(R.TAG_DATASET_VERSION, '?')[:12]}"
    lines = [f"v{v.version} {aliases}".rstrip(), f"  run {v.run_id}  data {data}  log p(x) {lml}"]
    if R.TAG_DECISION in v.tags:
        lines.append(f"  gate: {v.tags[R.TAG_DECISION]}")
    return "\n".join(lines)
