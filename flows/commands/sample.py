"""`aevb sample --model URI [-n 64] [--seed S] [--draws]`: x ~ p(z) p(x|z) (flow `aevb-sample`).

Writes `<data-root>/samples/<model>/v<N>/seed<S>-n<N>[-draws]/` (samples.parquet, grid.png, and
for a 2-D latent space manifold.png) and logs it to the model's MLflow run. Settings: the
`[sample]` config section (`--config FILE`, `sample.key=value`); flags win.
"""

from __future__ import annotations

import argparse

from flows.commands.common import HelpFormatter, config_args, data_root_arg, section_with_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate samples from a registry model (Parquet table + PNG grid)",
        description="Draw z ~ p(z) and decode it with a registry model: the decoder means "
        "E[x|z] (and with --draws x ~ p(x|z)) as a Parquet table and a PNG grid; a 2-D latent "
        "space also gets the manifold picture of the paper's Fig. 4.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model "
        "(e.g. models:/aevb-digits@champion)",
    )
    p.add_argument("-n", "--num-samples", type=int, default=None, help="how many (default: 64)")
    p.add_argument("--seed", type=int, default=None, help="seed of z and the draws (default: 0)")
    p.add_argument(
        "--draws",
        action="store_true",
        default=None,
        help="also sample x ~ p(x|z) (column x_draw, grid_draws.png)",
    )
    p.add_argument(
        "--manifold-size",
        type=int,
        default=None,
        help="side of the manifold grid for 2-D latent spaces (default: 20)",
    )
    data_root_arg(p)
    config_args(p)
    p.set_defaults(func=run, check=check, runs_flows=True, needs_tensorflow=True)


def check(args: argparse.Namespace):
    """Settings (flags over the [sample] section), then the registry entry (nothing downloaded
    yet); returns the sample settings."""
    from tasks import tracking

    s = section_with_flags(
        args,
        "sample",
        {
            "num_samples": args.num_samples,
            "seed": args.seed,
            "draws": args.draws,
            "manifold_size": args.manifold_size,
        },
    )
    tracking.parse_model_uri(args.model)
    tracking.find_model(args.model)
    return s


def run(args: argparse.Namespace, s) -> int:
    from flows.stages import sample_flow

    out = sample_flow(args.model, s.num_samples, s.seed, s.draws, s.manifold_size, args.data_root)
    where = (
        f"; logged to MLflow run {out.run_id} under {out.artifact_path}"
        if out.artifact_path
        else ""
    )
    print(
        f"samples: {out.path} ({out.rows} rows: {', '.join(out.files)}){where}"
        f"{'' if out.created else ' [already up to date]'}"
    )
    return 0
