"""CLI verb `models`: list registered models, show versions, promote a version."""

from __future__ import annotations

import argparse
import json

from flows.commands import config_args, data_root_arg, pipeline_config  # noqa: F401


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models, show versions, promote a version")
    p.add_argument("action", choices=["list", "show", "promote"])
    p.add_argument("name", nargs="?")
    p.add_argument("version", nargs="?", type=int)
    p.add_argument("--alias", default="champion")
    p.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from tasks import tracking

    if args.action == "list":
        for name in tracking.list_registered_models():
            versions = tracking.list_versions(name)
            champ = tracking.get_alias(name, "champion")
            print(
                f"{name}: {len(versions)} version(s); champion v{champ.version if champ else '-'}"
            )
        return 0
    if not args.name:
        raise ModelError(f"aevb models {args.action}: give the registered model NAME")
    if args.action == "show":
        for v in tracking.list_versions(args.name):
            print(
                json.dumps(
                    {
                        "version": v.version,
                        "aliases": list(v.aliases),
                        "run_id": v.run_id,
                        "tags": v.tags,
                    }
                )
            )
        return 0
    if args.version is None:
        raise ModelError("aevb models promote NAME VERSION: give the VERSION to promote")
    tracking.set_alias(args.name, args.alias, args.version)
    tracking.set_version_tags(
        args.name, args.version, {"aevb.gate.decision": f"manually set as {args.alias}"}
    )
    print(f"{args.name} v{args.version} is now @{args.alias}")
    return 0
