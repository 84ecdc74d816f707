"""`aevb train --dataset NAME [KEY=VALUE ...]`: fit an AEVB model (flow `aevb-train`)."""

from __future__ import annotations

import argparse

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
    from tasks.store.datasets import check_model_inputs, load_manifest, resolve_data_root

    config = pipeline_config(args)
    root = resolve_data_root(args.data_root)
    # Validate at the boundary, before Prefect or TF start: missing dataset, wrong value range.
    check_model_inputs(load_manifest(root, args.dataset, args.version), config.model.likelihood)
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
        f"  MLflow run {out.run_id} (experiment {out.experiment})\n  SavedModel {out.saved_model_dir}"
    )
    return 0
