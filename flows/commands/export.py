"""`aevb export --model URI --dataset NAME`: the latent feature table (flow `aevb-export`)."""

from __future__ import annotations

import argparse

from flows.commands.common import HelpFormatter, comma_list, data_root_arg
from models import constants as C
from models.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the latent feature table of a dataset with a registry model",
        description="Encode every row with the registry model's q(z|x) and publish the latent "
        "table (id, split, label, z_mean_*, z_std_*, and the per-row elbo score unless "
        "--no-elbo) under <data root>/latents/.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model "
        "(e.g. models:/aevb-digits@champion)",
    )
    p.add_argument("--dataset", required=True, help="ingested dataset name")
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    p.add_argument("--splits", default=",".join(C.SPLITS), help="comma-separated splits")
    p.add_argument("--batch-size", type=int, default=2000, help="rows per encoder call")
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
        "anomaly score beside elbo (0: off; costs K decoder passes per row)",
    )
    p.add_argument(
        "--elbo",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the per-row elbo anomaly score (one decoder pass per row); --no-elbo writes "
        "the codes only, ~1.7x faster",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the z samples and of the scores' noise",
    )
    data_root_arg(p)
    p.set_defaults(func=run, check=check, runs_flows=True)


def check(args: argparse.Namespace) -> tuple[str, ...]:
    """Arguments, then the dataset version, then the registry entry (nothing downloaded yet);
    returns the splits."""
    from tasks import tracking
    from tasks.export import check_export_args
    from tasks.store import datasets

    splits = comma_list(args.splits)
    check_export_args(splits, args.batch_size, args.samples, args.log_px_samples, args.elbo)
    if args.seed < 0:
        raise ConfigError(f"--seed={args.seed} must be an integer >= 0")
    tracking.parse_model_uri(args.model)
    datasets.load_manifest(args.data_root, args.dataset, args.version)
    tracking.find_model(args.model)
    return splits


def run(args: argparse.Namespace, splits: tuple[str, ...]) -> int:
    from flows.stages import export_flow

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
        args.elbo,
    )
    print(
        f"latent table: {out.path} ({out.rows} rows){'' if out.created else ' [already up to date]'}"
    )
    return 0
