"""`aevb train --dataset NAME [KEY=VALUE ...]`: fit an AEVB model (flow `aevb-train`)."""

from __future__ import annotations

import argparse
import dataclasses

from flows.commands.common import config_args, data_root_arg, pipeline_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train an AEVB model on an ingested dataset (tracked in MLflow)"
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    p.add_argument(
        "--force", action="store_true", help="retrain even if an identical finished run exists"
    )
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.stages import train_flow
    from models.config import check_architecture
    from tasks.store.datasets import check_model_inputs, load_manifest, resolve_data_root

    config = pipeline_config(args)
    root = resolve_data_root(args.data_root)
    # Validate at the boundary, before Prefect or TF start: missing dataset, wrong value range.
    manifest = load_manifest(root, args.dataset, args.version)
    check_model_inputs(manifest, config.model.likelihood)
    model = dataclasses.replace(config.model, feature_shape=tuple(manifest.feature_shape))
    check_architecture(model, config.train.theta, manifest.name)
    out = train_flow(args.dataset, config, root, args.version, force=args.force)
    print(
        f"trained {out.dataset}@{out.dataset_version[:12]}: best valid ELBO {out.best_valid_elbo:.3f} "
        f"(epoch {out.best_epoch}/{out.epochs_completed}){' [reused]' if out.reused else ''}\n"
        f"  MLflow run {out.run_id} (experiment {out.experiment})\n  SavedModel {out.saved_model_dir}"
    )
    return 0
