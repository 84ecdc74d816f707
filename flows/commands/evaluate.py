"""`aevb evaluate`: log p(x) of a registered or logged model on a dataset split.

    aevb evaluate --model models:/NAME@ALIAS|runs:/ID/model --dataset NAME [--split test]
                  [-k 5000] [--method is|ais|hmc] [--max-points N] [--num-chains C] [--num-steps T]

Runs as the Prefect flow `aevb-evaluate`; with a model that has an MLflow run, metrics (IS:
`<split>_<q>`, AIS/HMC: `<split>_<method>_<q>`) and the per-point Parquet land in that run, and a
Prefect table artifact summarises the numbers.
"""

from __future__ import annotations

import argparse
from typing import Any

from flows.commands.common import HelpFormatter, data_root_arg
from models import constants as C
from models.errors import ConfigError

METHODS = ("is", "ais", "hmc")
# models.hmc_estimator.MAX_LATENT_DIM, spelled here so that check() imports no TensorFlow (a test
# asserts they are equal).
HMC_MAX_LATENT_DIM = 5
METHOD_HELP = (
    "is: importance sampling over the whole split (default); ais: annealed importance sampling "
    "cross-check on the first --max-points rows (default 20); hmc: the paper's App. D estimator "
    "(latent dim <= 5, first --max-points rows)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="estimate log p(x) of a model on a dataset split",
        description="log p(x) of a model on a dataset split (mean +- standard error), logged to "
        "the model's MLflow run; the pipeline's evaluate stage runs method is.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model"
    )
    p.add_argument("--dataset", required=True, help="ingested dataset name")
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    p.add_argument("--split", default=C.TEST, choices=C.SPLITS, help="split to score")
    p.add_argument(
        "-k",
        "--num-samples",
        type=int,
        default=5000,
        help="importance samples per point (for ais/hmc: of the IS estimate on the same rows)",
    )
    p.add_argument("--batch-size", type=int, default=500, help="points per estimator call")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    # Not argparse `choices`: a bad value must be a one-line error (exit 2), not a usage dump.
    p.add_argument("--method", default="is", metavar="is|ais|hmc", help=METHOD_HELP)
    p.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="evaluate only the first N rows (default: all for is, 20 for ais/hmc)",
    )
    p.add_argument(
        "--num-chains",
        type=int,
        default=None,
        help="ais/hmc: chains per point (default: ais 16, hmc 10)",
    )
    p.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="ais: annealing temperatures T (default 1000); hmc: kept HMC draws (default 1000)",
    )
    p.add_argument(
        "--leapfrog-steps",
        type=int,
        default=None,
        help="ais/hmc: leapfrog steps per transition (default 10)",
    )
    p.add_argument(
        "--burnin", type=int, default=None, help="hmc: adapted burn-in steps (default 500)"
    )
    data_root_arg(p)
    p.set_defaults(func=run, check=check, runs_flows=True, needs_tensorflow=True)


def estimator_options(args: argparse.Namespace) -> dict[str, Any]:
    """The AIS/HMC keyword options given on the command line; refused for `is`."""
    steps_key = "num_steps" if args.method == "ais" else "num_samples"
    given = {
        "--num-chains": ("num_chains", args.num_chains),
        "--num-steps": (steps_key, args.num_steps),
        "--leapfrog-steps": ("num_leapfrog_steps", args.leapfrog_steps),
        "--burnin": ("num_burnin", args.burnin),
    }
    given = {flag: kv for flag, kv in given.items() if kv[1] is not None}
    if args.method == "is" and given:
        raise ConfigError(f"{', '.join(given)} apply to --method ais|hmc only, not to is")
    if args.method == "ais" and "--burnin" in given:
        raise ConfigError("--burnin applies to --method hmc only (AIS anneals from the prior)")
    for flag, (_, value) in given.items():
        if value < 1:
            raise ConfigError(f"{flag}={value} must be an integer >= 1")
    return {key: value for key, value in given.values()}


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Validate before anything expensive (model download, Prefect start); returns AIS/HMC options."""
    if args.method not in METHODS:
        raise ConfigError(f"--method {args.method!r} is not allowed; choose one of is, ais, hmc")
    for flag, value in (
        ("-k/--num-samples", args.num_samples),
        ("--batch-size", args.batch_size),
        ("--max-points", args.max_points),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}={value} must be an integer >= 1")
    if args.seed < 0:
        raise ConfigError(f"--seed={args.seed} must be an integer >= 0")
    return estimator_options(args)


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Arguments, then the dataset split (it exists and has rows), then the registry entry; no
    download, no Prefect yet. Returns the AIS/HMC options."""
    from models.errors import DatasetError
    from tasks import tracking
    from tasks.store import datasets

    options = check_args(args)
    tracking.parse_model_uri(args.model)
    manifest = datasets.load_manifest(args.data_root, args.dataset, args.version)
    if manifest.rows.get(args.split, 0) < 1:
        raise DatasetError(
            f"dataset {manifest.name!r} version {manifest.version} has no {args.split} rows; "
            f"evaluate another split (--split) or re-ingest with a {args.split} fraction > 0"
        )
    found = tracking.find_model(args.model)
    if args.method == "hmc":
        check_hmc_latents(args.model, found.run_id if found else None)
    return options


def check_hmc_latents(uri: str, run_id: str | None) -> None:
    """The App. D estimator refuses latent_dim > HMC_MAX_LATENT_DIM only after loading the model,
    streaming the rows and starting Prefect; the training run's logged `model.latent_dim` tells
    now. Models without such a run (or parameter) are checked by the estimator itself."""
    from tasks import tracking

    kind, first, _ = tracking.parse_model_uri(uri)
    run_id = run_id or (first if kind == "run" else None)
    known = run_id is not None and tracking.run_exists(run_id)
    latent = tracking.run_params(run_id).get("model.latent_dim") if known else None
    if latent is not None and int(latent) > HMC_MAX_LATENT_DIM:
        raise ConfigError(
            f"--method hmc: the Appendix D estimator needs latent_dim <= {HMC_MAX_LATENT_DIM} and "
            f"{uri} has latent_dim {latent}; use --method is (K=5000) or --method ais"
        )


def run(args: argparse.Namespace, options: dict[str, Any]) -> int:
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
        method=args.method,
        max_points=args.max_points,
        options=options or None,
        model_label=args.model,
    )
    print(format_summary(args.model, args.dataset, s))
    return 0


def format_summary(model: str, dataset: str, s: Any) -> str:
    """What the user reads: the estimate, what kind of number it is, and where it was logged."""
    head = f"{model} on {dataset}/{s.split} ({s.rows} rows, method {s.method}, K={s.num_samples}):"
    lml = f"{s.log_marginal_likelihood:.3f} +- {s.log_marginal_likelihood_stderr:.3f} nats"
    lines = [head, f"  kind of number: {s.score_kind or 'unknown'}"]
    if s.method == "is":
        lines.append(f"  log p(x) >= {lml} (IS estimate, a stochastic lower bound)")
        lines.append(
            f"  ELBO {s.elbo:.3f}  KL {s.kl:.3f}  reconstruction {s.reconstruction:.3f}  "
            f"active units {s.active_units}"
        )
    else:
        name = {"ais": "AIS estimate", "hmc": "App. D HMC estimate"}[s.method]
        is_mean = s.metrics_logged.get(
            C.metric_key(s.split, f"{s.method}_is_log_marginal_likelihood")
        )
        lines.append(f"  log p(x) ~ {lml} ({name}, mean +- stderr over points)")
        if is_mean is not None:
            lines.append(f"  IS on the same rows (K={s.num_samples}): {is_mean:.3f}")
    if getattr(s, "bits_per_dim", None) is not None:
        lines.append(f"  {s.bits_per_dim:.4f} bits/dim (-log p(x) / (D ln 2))")
    if s.metrics_logged and s.per_point_artifact:
        names = ", ".join(sorted(k for k in s.metrics_logged if "log_marginal" in k))
        lines.append(f"  logged to the model's MLflow run: {names}; {s.per_point_artifact}")
    if s.table_artifact:
        lines.append(f"  Prefect table artifact: {s.table_artifact}")
    return "\n".join(lines)
