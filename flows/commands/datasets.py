"""`aevb datasets list | show NAME [--version V]`: what is ingested, and a version's manifest."""

from __future__ import annotations

import argparse
import json

from flows.commands.common import HelpFormatter, data_root_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datasets",
        help="list datasets or show one's manifest",
        description="aevb datasets list | show NAME [--version V]",
        formatter_class=HelpFormatter,
    )
    p.add_argument("action", choices=["list", "show"], help="list all, or show one's manifest")
    p.add_argument("name", nargs="?", help="dataset name (show)")
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    data_root_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, checked: None = None) -> int:
    print(format_datasets(args))
    return 0


def format_datasets(args: argparse.Namespace) -> str:
    """Text for `aevb datasets list|show NAME [--version V]`."""
    from models.constants import TEST, TRAIN, VALID
    from models.errors import DatasetError
    from tasks.store import datasets as ds

    root = ds.resolve_data_root(getattr(args, "data_root", None))
    if args.action == "list":
        rows = [
            f"{'NAME':<24} {'VERSION':<16} {'SHAPE':<12} {'DTYPE':<8} {'TRAIN':>8} "
            f"{'VALID':>7} {'TEST':>7}  CREATED"
        ]
        for m in ds.list_datasets(root):
            shape = "x".join(map(str, m.feature_shape))
            rows.append(
                f"{m.name:<24} {m.version:<16} {shape:<12} {m.storage_dtype:<8} "
                f"{m.rows.get(TRAIN, 0):>8} {m.rows.get(VALID, 0):>7} {m.rows.get(TEST, 0):>7}  "
                f"{m.created_at}"
            )
        if len(rows) == 1:
            return f"no datasets under {root}; create one with `aevb ingest digits --name digits`"
        return "\n".join(rows)
    if not getattr(args, "name", None):
        raise DatasetError("`aevb datasets show` needs a dataset NAME; see `aevb datasets list`")
    manifest = ds.load_manifest(root, args.name, getattr(args, "version", None))
    current = ds.current_version(root, args.name)
    doc = json.loads(manifest.to_json())
    doc["path"] = ds.version_dir(root, args.name, manifest.version)
    doc["versions"] = [
        f"{v}{' (CURRENT)' if v == current else ''}" for v in ds.list_versions(root, args.name)
    ]
    return json.dumps(doc, indent=2)
