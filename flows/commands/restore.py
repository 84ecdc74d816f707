"""`aevb restore`: restored inputs with a registry model as the prior over x (flows
`aevb-restore`, `aevb-restore-from-latents`).

    aevb restore --model models:/NAME@ALIAS --dataset DEGRADED [--method amortized|map|
                 pseudo-gibbs|mwg] [--splits test] [--kind K --mask MASK_DATASET]
    aevb restore --model models:/NAME@ALIAS --from-latents LATENT_TABLE

Inputs are validated before a flow starts (unknown kind or method, missing dataset, bad numbers,
a registry name/alias that does not exist), so a user error costs no Prefect or TF start-up.
"""

from __future__ import annotations

import argparse
from typing import Any

from flows.commands.common import HelpFormatter, data_root_arg, finite_float
from flows.commands.corrupt import KINDS
from models import constants as C
from models.errors import ConfigError, DatasetError, ModelError

# Spelled here so that building the parser imports no task module; a test asserts it equals
# tasks.restore.METHODS.
METHODS = ("amortized", "map", "pseudo-gibbs", "mwg")


def add_parser(sub: argparse._SubParsersAction) -> None:
    kinds = "|".join(KINDS)
    p = sub.add_parser(
        "restore",
        help="restore degraded inputs with a registry model as prior",
        description="Restore a degraded dataset with the model as the prior over x: a restored "
        "table in a folder named by the method and its non-default settings, PSNR/MSE against "
        "the clean reference beside strong model-free baselines with the margin over the best, "
        "and before/after pictures (degraded, restored, clean; the best baseline's) logged to the "
        "model's MLflow run.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model (any training run)",
    )
    p.add_argument("--dataset", default=None, help="degraded dataset (e.g. from `aevb corrupt`)")
    p.add_argument(
        "--from-latents",
        default=None,
        metavar="TABLE",
        help="decode a latent table's z_mean rows instead (folder or Parquet file)",
    )
    p.add_argument(
        "--method",
        default="map",
        metavar="|".join(METHODS),
        help="amortized: encode+decode; map: latent MAP; pseudo-gibbs/mwg: inpainting chains",
    )
    p.add_argument("--version", default=None, help="degraded dataset version (default: CURRENT)")
    p.add_argument("--splits", default=C.TEST, help="comma-separated splits")
    p.add_argument(
        "--kind",
        default=None,
        metavar=kinds,
        help="degradation of a dataset not made by `aevb corrupt`",
    )
    p.add_argument("--mask", default=None, help="inpaint: mask dataset (1 = observed)")
    p.add_argument(
        "--noise-std",
        type=finite_float,
        default=None,
        help="denoise: noise sigma (default: recorded, else estimated); "
        "superres: observation sigma_y (default 0.05)",
    )
    p.add_argument(
        "--estimate-noise",
        action="store_true",
        help="denoise: estimate the noise level jointly with the latent MAP",
    )
    p.add_argument("--batch-size", type=int, default=500, help="rows per restoration call")
    p.add_argument("--map-steps", type=int, default=200, help="map: Adam steps on z")
    p.add_argument("--learning-rate", type=finite_float, default=0.05, help="map: Adam step size")
    p.add_argument("--iterations", type=int, default=200, help="pseudo-gibbs/mwg chain length")
    p.add_argument("--burn-in", type=int, default=50, help="pseudo-gibbs/mwg: discarded steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the chains")
    p.add_argument(
        "--no-mlflow",
        action="store_true",
        help="do not log PSNR/MSE and the picture to the model's MLflow run",
    )
    data_root_arg(p)
    p.set_defaults(func=run, check=check, runs_flows=True, needs_tensorflow=True)


def check_model(uri: str) -> None:
    """A registry name/alias or name/version that does not exist fails here, before any flow; a
    training run's model (runs:/RUN_ID/model) is fine, a bare logged model (models:/m-...) has
    no name or run to key the output by."""
    from tasks import tracking

    if tracking.parse_model_uri(uri)[0] == "logged":
        raise ModelError(
            f"--model {uri}: use models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model"
        )
    tracking.find_model(uri)


def check_latent_table(table: str) -> None:
    """A local latent table (folder or file) holds regular files only, and the dataset name its
    manifest records (it names the output folder) is a valid name."""
    from tasks.sources.files import check_path
    from tasks.store import fs, tables
    from tasks.store.datasets import validate_name

    if fs.is_local(table) and fs.exists(table):
        check_path(table, "latent table")
    _, manifest = tables.latent_parts(table)
    if manifest.get("dataset") is not None:
        try:
            validate_name(manifest["dataset"])
        except DatasetError as exc:
            raise DatasetError(f"--from-latents {table}: its manifest's dataset: {exc}") from exc


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Settings, then the data (degraded, mask and clean datasets, or the latent table), then the
    registry entry; before any flow. Returns what `run` needs."""
    from tasks.restore import RestoreSettings, plan

    if (args.dataset is None) == (args.from_latents is None):
        raise ConfigError("give exactly one of --dataset DEGRADED or --from-latents TABLE")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} must be >= 1")
    if args.from_latents is not None:
        check_latent_table(args.from_latents)
        check_model(args.model)
        return {}
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    bad = [s for s in splits if s not in C.SPLITS]
    if not splits or bad:
        raise ConfigError(f"--splits {args.splits!r}: choose from {', '.join(C.SPLITS)}")
    if args.seed < 0:
        raise ConfigError(f"--seed={args.seed} must be an integer >= 0")
    settings = RestoreSettings(
        batch_size=args.batch_size,
        map_steps=args.map_steps,
        learning_rate=args.learning_rate,
        iterations=args.iterations,
        burn_in=args.burn_in,
        noise_std=args.noise_std,
        estimate_noise=args.estimate_noise,
        seed=args.seed,
    )
    plan(args.dataset, args.method, args.data_root, args.version, args.kind, args.mask)
    check_model(args.model)
    return {"splits": splits, "settings": settings}


def run(args: argparse.Namespace, checked: dict[str, Any]) -> int:
    from flows.stages import decode_latents_flow, restore_flow

    if args.from_latents is not None:
        out = decode_latents_flow(args.model, args.from_latents, args.data_root, args.batch_size)
        print(
            f"decoded {out.rows} latent rows with {args.model}\n  {out.path}"
            + ("" if out.created else " [already up to date]")
        )
        return 0
    out = restore_flow(
        args.model,
        args.dataset,
        args.method,
        args.data_root,
        args.version,
        checked["splits"],
        checked["settings"],
        args.kind,
        args.mask,
        not args.no_mlflow,
    )
    print(format_restore(out))
    return 0


def format_restore(out: Any) -> str:
    """The restoration, then per split the model's PSNR/MSE beside every baseline's and the honest
    margin against the best one (negative where a baseline wins), diagnostics, warnings, pictures."""
    from models.restoration_baselines import slug

    head = (
        f"restored {out.rows} rows of {out.dataset} ({out.kind}) with {out.model_uri}, "
        f"method {out.method}{'' if out.created else ' [already up to date]'}\n  {out.path}"
    )
    lines = [head]
    for s in sorted({k.split("_", 1)[0] for k in out.metrics}):
        m = {k.split("_", 1)[1]: v for k, v in out.metrics.items() if k.startswith(s + "_")}
        lines.append(f"  {s + ' split':<34} {'PSNR dB':>8} {'MSE':>10}")
        lines.append(f"    {out.method + ' (the model)':<32} {m['psnr']:8.2f} {m['mse']:10.5f}")
        for name in out.baselines:
            best = "  <- best baseline" if name == out.baseline else ""
            b_psnr, b_mse = m[f"baseline_{slug(name)}_psnr"], m[f"baseline_{slug(name)}_mse"]
            lines.append(f"    {name:<32} {b_psnr:8.2f} {b_mse:10.5f}{best}")
        lines.append(
            f"    {'margin over the best baseline':<32} {m['margin_psnr']:+8.2f} "
            f"{m['margin_mse']:+10.5f}  (negative: the baseline wins)"
        )
    for k, v in out.diagnostics.items():
        lines.append(f"  {k}: {v:.4g}")
    for w in out.warnings:
        lines.append(f"  warning: {w}")
    if out.picture:
        lines.append(f"  before/after picture (degraded | restored | clean): {out.picture}")
    if out.baseline_picture:
        lines.append(f"  the best baseline's picture ({out.baseline}): {out.baseline_picture}")
    if out.picture_artifact:
        lines.append(f"  logged to the model's MLflow run: {out.picture_artifact}")
    return "\n".join(lines)
