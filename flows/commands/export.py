"""`aevb export --model URI --dataset NAME`: the latent feature table (flow `aevb-export`)."""

from __future__ import annotations

import argparse

from flows.commands.common import comma_list, data_root_arg
from models import constants as C


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write the latent feature table of a dataset with a registry model"
    )
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model "
        "(e.g. models:/aevb-digits@champion)",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    p.add_argument(
        "--splits", default=",".join(C.SPLITS), help="comma-separated splits (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=2000, help="rows per encoder call (default: %(default)s)"
    )
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        help="also write K draws z ~ q(z|x) per row as z_samples (default: 0, none)",
    )
    p.add_argument(
        "--log-px-samples",
        type=int,
        default=0,
        help="also write log_px, log p(x) by importance sampling with K samples per row, an "
        "anomaly score beside the always-written elbo (default: 0, off; costs K decoder passes "
        "per row)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the z samples and of the scores' noise (default: 0)",
    )
    data_root_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.stages import export_flow
    from tasks.export import check_export_args

    splits = comma_list(args.splits)
    check_export_args(splits, args.batch_size, args.samples, args.log_px_samples)
    out = export_flow(
        args.model,
        args.dataset,
        args.data_root,
        args.version,
        splits,
        args.batch_size,
        args.samples,
        args.seed,
        args.log_px_samples,
    )
    print(
        f"latent table: {out.path} ({out.rows} rows){'' if out.created else ' [already up to date]'}"
    )
    return 0
