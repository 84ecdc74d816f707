"""CLI verb `evaluate`: log p(x) of a registered or logged model on a dataset split."""

from __future__ import annotations

import argparse

from flows.commands import config_args, data_root_arg, pipeline_config  # noqa: F401
from models import constants as C


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="estimate log p(x) of a model on a dataset split")
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model"
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--version", default=None)
    p.add_argument("--split", default=C.TEST, choices=C.SPLITS)
    p.add_argument(
        "-k", "--num-samples", type=int, default=5000, help="importance samples per point"
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--method", default="is", choices=["is"], help="estimator (is: importance sampling)"
    )
    data_root_arg(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from flows.stages import evaluate_flow
    from tasks.tracking import resolve_model

    resolved = resolve_model(args.model)
    s = evaluate_flow(
        resolved.saved_model_dir,
        args.dataset,
        args.version,
        args.data_root,
        args.split,
        args.num_samples,
        args.batch_size,
        args.seed,
        run_id=resolved.run_id,
    )
    print(
        f"{args.model} on {args.dataset}/{s.split} ({s.rows} rows, K={s.num_samples}):\n"
        f"  log p(x) >= {s.log_marginal_likelihood:.3f} +- {s.log_marginal_likelihood_stderr:.3f} (IS estimate)\n"
        f"  ELBO {s.elbo:.3f}  KL {s.kl:.3f}  reconstruction {s.reconstruction:.3f}  active units {s.active_units}"
    )
    return 0
