"""`aevb score --model URI --dataset NAME [--version V]`: per-row anomaly scores (flow `aevb-score`).

Writes the latent table with `elbo` and `log_px` for any dataset version, e.g. a new batch of data
ingested as its own version, at `<data-root>/scores/<dataset>/<model>/v<N>/<dataset-version>/`.
Settings: the `[score]` config section (`--config FILE`, `score.key=value`), flags win.
"""

from __future__ import annotations

import argparse

from flows.commands.common import (
    HelpFormatter,
    comma_list,
    config_args,
    data_root_arg,
    section_with_flags,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score every row of a dataset version (elbo, log p(x)) with a registry model",
        description="Score every row of a dataset version with a registry model: the latent "
        "table plus `elbo` and `log_px` (importance-sampled log p(x)); the lowest rows are the "
        "ones the model finds least likely.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    p.add_argument("--splits", default=None, help="comma-separated splits (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per call (default: 2000)")
    p.add_argument(
        "--log-px-samples",
        type=int,
        default=None,
        help="K importance samples per row for log_px (default: 1000; 0: elbo only)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the scores (default: 0)")
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run, check=check, runs_flows=True)


def check(args: argparse.Namespace):
    """Settings (flags over the [score] section), then the dataset version, then the registry
    entry (nothing downloaded yet); returns the score settings."""
    from tasks import tracking
    from tasks.store import datasets

    s = section_with_flags(
        args,
        "score",
        {
            "splits": list(comma_list(args.splits)) if args.splits is not None else None,
            "batch_size": args.batch_size,
            "log_px_samples": args.log_px_samples,
            "seed": args.seed,
        },
    )
    tracking.parse_model_uri(args.model)
    datasets.load_manifest(args.data_root, args.dataset, args.version)
    tracking.find_model(args.model)
    return s


def run(args: argparse.Namespace, s) -> int:
    from flows.stages import score_flow

    out = score_flow(
        args.model,
        args.dataset,
        args.data_root,
        args.version,
        s.splits,
        s.batch_size,
        s.log_px_samples,
        s.seed,
    )
    columns = "elbo, log_px" if s.log_px_samples else "elbo"
    print(
        f"score table: {out.path} ({out.rows} rows; {columns})"
        f"{'' if out.created else ' [already up to date]'}"
    )
    return 0
