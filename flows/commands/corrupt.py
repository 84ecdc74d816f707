"""`aevb corrupt DATASET --kind denoise|salt-pepper|inpaint|superres`: a degraded copy of a dataset
with its clean reference kept (flow `aevb-corrupt`).

    aevb corrupt DATASET --kind KIND [--name NAME] [--noise-std S] [--amount P] [--factor F]
                 [--block B] [--seed N]

Inputs are validated before the flow starts, so a user error costs no Prefect or TF start-up.
"""

from __future__ import annotations

import argparse

from flows.commands.common import HelpFormatter, data_root_arg, finite_float
from models.errors import ConfigError

# Spelled here so that building the parser imports no task module; a test asserts they equal
# tasks.store.degradations.KINDS.
KINDS = ("denoise", "salt-pepper", "inpaint", "superres")


def add_parser(sub: argparse._SubParsersAction) -> None:
    kinds = "|".join(KINDS)
    p = sub.add_parser(
        "corrupt",
        help="make a degraded copy of a dataset (clean reference kept)",
        description="A degraded copy of a dataset (same ids and splits) with its clean reference "
        "and mask recorded, for `aevb restore`.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dataset", help="the clean dataset")
    # Not argparse `choices`: a bad value must be a one-line error (exit 2), not a usage dump.
    p.add_argument(
        "--kind",
        required=True,
        metavar=kinds,
        help="denoise: Gaussian noise; salt-pepper: entries set to 0/1; inpaint: missing "
        "entries; superres: downsampled",
    )
    p.add_argument("--name", default=None, help="degraded dataset name (default DATASET-KIND)")
    p.add_argument("--version", default=None, help="clean dataset version (default: CURRENT)")
    p.add_argument(
        "--noise-std", type=finite_float, default=0.2, help="denoise: Gaussian noise sigma"
    )
    p.add_argument(
        "--amount",
        type=finite_float,
        default=None,
        help="salt-pepper: fraction of entries hit (default 0.1); inpaint: missing fraction (0.5)",
    )
    p.add_argument("--factor", type=int, default=2, help="superres: downsampling factor")
    p.add_argument(
        "--block", type=int, default=0, help="inpaint: one BxB hole per image (0: random pixels)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise or mask")
    data_root_arg(p)
    p.set_defaults(func=run, check=check, runs_flows=True)


def check(args: argparse.Namespace):
    """Settings (kind, numbers, the new name), then the clean dataset, then whether the
    degradation fits its shape; returns (kind, clean manifest, options)."""
    from tasks.store import datasets
    from tasks.store.degradations import degradation_kind, make_spec

    kind = degradation_kind(args.kind)
    if args.noise_std <= 0:
        raise ConfigError(f"--noise-std={args.noise_std:g} must be > 0")
    if args.amount is not None and not 0 < args.amount < 1:
        raise ConfigError(f"--amount={args.amount:g} must lie in (0, 1)")
    for flag, value in (("--block", args.block), ("--seed", args.seed)):
        if value < 0:
            raise ConfigError(f"{flag}={value} must be an integer >= 0")
    if args.name is not None:
        datasets.validate_name(args.name)
    clean = datasets.load_manifest(args.data_root, args.dataset, args.version)
    if args.name is None:  # the default DATASET-KIND must be a valid name too
        datasets.validate_name(f"{clean.name}-{args.kind}")
    make_spec(
        kind,
        clean.feature_shape,
        clean.value_range,
        noise_std=args.noise_std if kind == "gaussian" else None,
        amount=args.amount,
        factor=args.factor,
        block=args.block,
    )
    options = {
        "noise_std": args.noise_std,
        "amount": args.amount,
        "factor": args.factor,
        "block": args.block,
        "seed": args.seed,
    }
    return kind, clean, options


def run(args: argparse.Namespace, checked) -> int:
    from flows.stages import corrupt_flow

    kind, clean, options = checked
    out = corrupt_flow(args.dataset, kind, args.name, args.data_root, clean.version, options)
    state = "new version" if out.created else "unchanged (already made; nothing written)"
    print(f"degraded dataset {out.name} version {out.version}: {state}\n  {out.path}")
    print(f"  clean reference {out.clean['name']}@{out.clean['version']}")
    if out.mask:
        print(f"  mask dataset {out.mask['name']}@{out.mask['version']}")
    return 0
