"""`aevb train --dataset NAME [KEY=VALUE ...]`: fit an AEVB model (flow `aevb-train`)."""

from __future__ import annotations

import argparse
import dataclasses

from flows.commands.common import (
    HelpFormatter,
    config_args,
    data_root_arg,
    pipeline_config,
    settings_epilog,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an AEVB model on an ingested dataset (tracked in MLflow)",
        description="Fit an AEVB model on an ingested dataset: per-epoch checkpoints (a killed "
        "run resumes), metrics, plots and the model in an MLflow run (runs:/<run id>/model: "
        "evaluate, export and restore it; registering it is the pipeline's decision).",
        epilog=settings_epilog(),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="ingested dataset name (`aevb datasets list`)")
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    p.add_argument(
        "--force", action="store_true", help="retrain even if an identical finished run exists"
    )
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run, check=check, runs_flows=True, needs_tensorflow=True)


def check(args: argparse.Namespace):
    """The config (every setting), then the dataset: it exists, fits the likelihood and the
    architecture, and is big enough (one batch, a validation row). Before Prefect or TF start;
    returns (config, root)."""
    from models.config import check_architecture
    from tasks.store.datasets import (
        check_model_inputs,
        check_trainable,
        load_manifest,
        resolve_data_root,
    )

    config = pipeline_config(args)
    root = resolve_data_root(args.data_root)
    manifest = load_manifest(root, args.dataset, args.version)
    check_model_inputs(manifest, config.model.likelihood)
    model = dataclasses.replace(config.model, feature_shape=tuple(manifest.feature_shape))
    check_architecture(model, config.train.theta, manifest.name)
    check_trainable(manifest, config.train.batch_size)
    return config, root


def run(args: argparse.Namespace, checked) -> int:
    from flows.stages import train_flow

    config, root = checked
    out = train_flow(args.dataset, config, root, args.version, force=args.force)
    if out.cluster_role and not out.run_id:  # train.strategy='multi_worker', not the chief
        done = "nothing to train (the chief reuses its run)" if out.reused else "trained its share"
        print(
            f"{out.cluster_role}: {done}; the chief (worker 0) logs to MLflow and saves the model"
        )
        return 0
    print(
        f"trained {out.dataset}@{out.dataset_version[:12]}: best valid ELBO {out.best_valid_elbo:.3f} "
        f"(epoch {out.best_epoch}/{out.epochs_completed}){' [reused]' if out.reused else ''}"
        f"{f' [{out.cluster_role}]' if out.cluster_role else ''}\n"
        f"  MLflow run {out.run_id} (experiment {out.experiment})\n  SavedModel {out.saved_model_dir}\n"
        f"  model {out.model_uri} (for --model of evaluate, export, score, sample, restore)"
    )
    return 0
