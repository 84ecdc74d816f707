"""CLI verb `export`: latent feature tables from a registry model."""

from __future__ import annotations

import argparse

from flows.commands import config_args, data_root_arg, pipeline_config  # noqa: F401
from models import constants as C


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write the latent feature table of a dataset with a registry model"
    )
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS (e.g. models:/aevb-digits@champion)"
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--version", default=None)
    p.add_argument("--splits", default=",".join(C.SPLITS), help="comma-separated splits")
    p.add_argument("--batch-size", type=int, default=2000)
    data_root_arg(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from flows.stages import export_flow

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    out = export_flow(
        args.model, args.dataset, args.data_root, args.version, splits, args.batch_size
    )
    print(
        f"latent table: {out.path} ({out.rows} rows){'' if out.created else ' [already up to date]'}"
    )
    return 0
