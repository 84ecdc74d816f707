"""`aevb ingest SOURCE [--name NAME] [...]`: a source -> a versioned Parquet dataset (flow
`aevb-ingest`)."""

from __future__ import annotations

import argparse

from flows.commands.common import HelpFormatter, data_root_arg, finite_float
from models.errors import ConfigError

# Flag -> reader option (only set flags are passed on, so readers keep their defaults).
SOURCE_FLAGS = (
    "format",
    "path",
    "scale",
    "storage_dtype",
    "id_column",
    "label_column",
    "x_column",
    "feature_columns",
    "labels_file",
    "color",
    "labels_from_folders",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="ingest a source into a versioned Parquet dataset",
        description="A source -> a versioned Parquet dataset under the data root (identical "
        "content again is a no-op). Reader options apply to the formats named in their help.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="digits | mnist-5k | fashion-mnist | a file or folder (IDX, CSV, NPZ, images, Parquet)",
    )
    p.add_argument("--name", help="dataset name, [a-z0-9][a-z0-9._-]{0,63} (default: from SOURCE)")
    data_root_arg(p)
    p.add_argument(
        "--format", choices=("idx", "csv", "npz", "images", "parquet"), help="skip format detection"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/valid/test split")
    p.add_argument(
        "--valid-fraction",
        type=finite_float,
        default=0.1,
        help="share of rows for validation",
    )
    p.add_argument(
        "--test-fraction",
        type=finite_float,
        default=0.1,
        help="share of rows for test; IDX t10k files are the test split regardless",
    )
    p.add_argument(
        "--scale",
        type=finite_float,
        help="model input = stored value * SCALE (default: 1/255 for whole numbers 0..255, else 1)",
    )
    p.add_argument(
        "--storage-dtype",
        choices=("auto", "uint8", "float32"),
        help="on-disk dtype of x (default auto)",
    )
    p.add_argument(
        "--id-column", help="CSV/Parquet: column of unique row ids (default: row numbers)"
    )
    p.add_argument(
        "--label-column", help="CSV/Parquet: column of labels (ints, or strings mapped to ints)"
    )
    p.add_argument("--x-column", help="Parquet: list column holding the features")
    p.add_argument(
        "--feature-columns",
        type=lambda s: s.split(","),
        help="CSV/Parquet: comma-separated feature columns (default: all other numeric columns)",
    )
    p.add_argument("--labels-file", help="IDX: labels file for a single images file")
    p.add_argument(
        "--path",
        help="fashion-mnist: folder of its IDX files (default /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument(
        "--color",
        choices=("auto", "grayscale", "rgb"),
        help="images: pixel mode (default auto: rgb if any image is colour)",
    )
    p.add_argument(
        "--labels-from-folders",
        action="store_true",
        default=None,
        help="images: use each image's sub-folder name as its label",
    )
    p.set_defaults(func=run, check=check, runs_flows=True)


def source_options(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in SOURCE_FLAGS if getattr(args, k, None) is not None}


def check(args: argparse.Namespace) -> dict:
    """Settings (fractions, reader options, name), then the source's path, files and format;
    returns the reader options. The data itself is read (and checked) inside the flow."""
    from tasks.ingest import check_fractions, default_name
    from tasks.sources import check_options, check_source
    from tasks.store.datasets import validate_name

    check_fractions(args.valid_fraction, args.test_fraction)
    if args.split_seed < 0:
        raise ConfigError(f"--split-seed={args.split_seed} must be an integer >= 0")
    options = source_options(args)
    check_options(options)
    if args.name is not None:
        validate_name(args.name)
    else:
        default_name(args.source)  # a name must come out of the source's file name
    check_source(args.source, options)
    return options


def run(args: argparse.Namespace, options: dict) -> int:
    from flows.stages import ingest_flow

    result = ingest_flow(
        args.source,
        args.name,
        args.data_root,
        args.split_seed,
        args.valid_fraction,
        args.test_fraction,
        options,
    )
    state = "new version" if result.created else "unchanged (already ingested; nothing written)"
    print(f"dataset {result.name} version {result.version}: {state}\n  {result.path}")
    return 0
