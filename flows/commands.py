"""CLI verbs for the core stages: ingest, datasets, train (shared argument helpers live here too)."""

from __future__ import annotations

import argparse


def data_root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="data root folder or URI (default: $AEVB_DATA_ROOT, else ./data in the repo)",
    )


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="pipeline config file (TOML)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.epochs=5 model.latent_dim=2 preset=paper",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from tasks.ingest import add_ingest_arguments

    p = sub.add_parser("ingest", help="ingest a source into a versioned Parquet dataset")
    add_ingest_arguments(p)
    p.set_defaults(func=run_ingest)

    p = sub.add_parser("datasets", help="list datasets or show one's manifest")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?")
    p.add_argument("--version", default=None, help="dataset version (default: CURRENT)")
    data_root_arg(p)
    p.set_defaults(func=run_datasets)

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
    p.set_defaults(func=run_train)


def pipeline_config(args: argparse.Namespace, extra: list[str] | None = None):
    from flows.config import load_config

    overrides = list(extra or []) + list(getattr(args, "overrides", []) or [])
    return load_config(args.config, overrides)


def run_ingest(args: argparse.Namespace) -> int:
    from tasks.ingest import ingest_from_args

    result = ingest_from_args(args)
    state = "new version" if result.created else "unchanged (already ingested; nothing written)"
    print(f"dataset {result.name} version {result.version}: {state}\n  {result.path}")
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    from tasks.ingest import datasets_command

    return datasets_command(args)


def run_train(args: argparse.Namespace) -> int:
    from flows.stages import train_flow
    from tasks.datasets import check_model_inputs, load_manifest, resolve_data_root

    config = pipeline_config(args)
    root = resolve_data_root(args.data_root)
    # Validate at the boundary, before Prefect or TF start: missing dataset, wrong value range.
    check_model_inputs(load_manifest(root, args.dataset, args.version), config.model.likelihood)
    out = train_flow(
        args.dataset, config, resolve_data_root(args.data_root), args.version, force=args.force
    )
    print(
        f"trained {out.dataset}@{out.dataset_version[:12]}: best valid ELBO {out.best_valid_elbo:.3f} "
        f"(epoch {out.best_epoch}/{out.epochs_completed}){' [reused]' if out.reused else ''}\n"
        f"  MLflow run {out.run_id} (experiment {out.experiment})\n  SavedModel {out.saved_model_dir}"
    )
    return 0
