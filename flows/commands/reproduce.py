"""`aevb reproduce`: rerun the paper's experiments and write the Markdown report.

    aevb reproduce [--quick|--full] [--out DIR] [--dataset mnist-5k|digits|fashion-mnist]
                   [--experiments fig2,fig3,...] [--seed N] [--no-mlflow] [KEY=VALUE ...]

KEY=VALUE overrides set fields of `tasks.reproduce.ReproduceSettings` (tuples as comma lists),
e.g. ``fig2_latents=3,20 fig2_budgets=10000,30000``. Everything is validated before the flow starts.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from flows.commands.common import HelpFormatter
from flows.config_reproduce import parse_reproduce_overrides
from models.config import EVAL_SEED_ROOM
from models.errors import ConfigError

DATASETS = ("mnist-5k", "digits", "fashion-mnist")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="rerun the paper's experiments (Figs. 2-5, estimator variance, full VB) as a report",
        description="Regenerate report.md, PNG figures, results.json/csv in --out and log them to "
        "MLflow (experiment aevb-reproduce). --quick takes minutes, --full up to an hour on 2 cores.",
        formatter_class=HelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="(default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    mode.add_argument("--mode", dest="mode", help="quick or full (same as --quick / --full)")
    p.add_argument("--out", default="reproduce-report", help="report folder (default: %(default)s)")
    p.add_argument(
        "--dataset",
        default="mnist-5k",
        help=f"binary data for Figs. 2, 3, 5 and full VB: {', '.join(DATASETS)} (default: %(default)s)",
    )
    p.add_argument(
        "--experiments",
        default=None,
        help="comma-separated subset of fig2, fig3, gradient_variance, manifolds, full_vb (default: all)",
    )
    p.add_argument(
        "--seed", default="0", help="seed of data binarization and training (default: 0)"
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="settings overrides, e.g. fig2_latents=3,20 fig3_budgets=10000,50000",
    )
    p.set_defaults(func=run, check=validate, runs_flows=True, mode=None)


def validate(args: argparse.Namespace) -> dict[str, Any]:
    """Check every argument (no flow, no training yet); returns the flow's keyword arguments."""
    mode = args.mode or "quick"
    if mode not in ("quick", "full"):
        raise ConfigError(f"reproduce --mode={mode!r}; choose 'quick' or 'full'")
    if args.dataset not in DATASETS:
        raise ConfigError(
            f"reproduce --dataset={args.dataset!r}; choose one of {', '.join(DATASETS)}"
        )
    try:
        seed = int(args.seed)
    except ValueError as exc:
        raise ConfigError(f"reproduce --seed={args.seed!r} must be an integer") from exc
    if not 0 <= seed < 2**31 - EVAL_SEED_ROOM:
        raise ConfigError(f"reproduce --seed={seed} must be in [0, {2**31 - EVAL_SEED_ROOM})")
    overrides = parse_reproduce_overrides(list(getattr(args, "overrides", None) or []))
    # (the experiments import TensorFlow: only once the plain arguments are fine)
    from tasks.reproduce import EXPERIMENTS, check_dataset, full_settings, quick_settings

    names = None
    if args.experiments is not None:
        names = [n.strip() for n in args.experiments.split(",") if n.strip()]
        unknown = [n for n in names if n not in EXPERIMENTS]
        if unknown or not names:
            raise ConfigError(
                f"reproduce --experiments: unknown {unknown or 'empty list'}; "
                f"choose from {', '.join(EXPERIMENTS)}"
            )
    make = quick_settings if mode == "quick" else full_settings
    try:
        make(seed=seed, dataset=args.dataset, **overrides)  # the settings' own checks
    except TypeError as exc:
        raise ConfigError(f"reproduce settings: {exc}") from exc
    check_dataset(args.dataset)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"reproduce --out={args.out!r} is a file; give a folder")
    return dict(
        quick=mode == "quick",
        out_dir=out,
        seed=seed,
        dataset=args.dataset,
        experiments=names,
        track=not args.no_mlflow,
        overrides=overrides or None,
    )


def run(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    from flows.reproduce import reproduce_flow

    result = reproduce_flow(**kwargs)
    claims = {k: v for k, v in result.summary.items() if k.startswith("claim_")}
    print(f"report: {result.report}")
    print(
        "wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
        + (f"; MLflow run {result.mlflow_run_id}" if result.mlflow_run_id else "")
    )
    print("claims: " + json.dumps({k: round(v, 3) for k, v in claims.items()}))
    return 0
