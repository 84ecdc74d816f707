"""Restoration quality against strong model-free baselines (numbers, not a test).

Restores every degraded copy of a dataset made by `aevb corrupt` (digits-inpaint, digits-denoise,
digits-superres, digits-salt-pepper by default) with every method that applies, through
`tasks.restore.restore_dataset` (the code `aevb restore` runs, without MLflow logging), and prints
a Markdown table: each method's mean test PSNR, every baseline's, the best baseline and the margin
(model - best baseline, dB; negative where the baseline wins). Also prints the load average.

    aevb pipeline digits
    for k in inpaint denoise superres salt-pepper; do aevb corrupt digits --kind $k; done
    .venv/bin/python bench/restore_baselines.py --model models:/aevb-digits@champion
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("inpaint", "denoise", "superres", "salt-pepper")
METHODS = {"inpaint": ("amortized", "map", "pseudo-gibbs", "mwg")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models:/aevb-digits@champion")
    p.add_argument("--dataset", default="digits", help="the clean dataset the copies came from")
    p.add_argument("--data-root", default=None)
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated degradations")
    p.add_argument("--estimate-noise", action="store_true", help="also denoise with sigma unknown")
    args = p.parse_args()

    from tasks.restore import RestoreSettings, restore_dataset

    kinds = [k for k in args.kinds.split(",") if k]
    runs = [(k, m, RestoreSettings()) for k in kinds for m in METHODS.get(k, ("amortized", "map"))]
    if args.estimate_noise and "denoise" in kinds:
        runs.append(("denoise", "map", RestoreSettings(estimate_noise=True)))
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        "| degraded dataset | method | PSNR dB | baselines (PSNR dB) | best baseline | margin dB |"
    )
    print("|---|---|---|---|---|---|")
    for kind, method, settings in runs:
        start = time.perf_counter()
        out = restore_dataset(
            args.model, f"{args.dataset}-{kind}", method, args.data_root, settings=settings,
            log_to_mlflow=False,
        )  # fmt: skip
        m = out.metrics
        from models.restoration_baselines import slug

        others = ", ".join(f"{n} {m[f'test_baseline_{slug(n)}_psnr']:.2f}" for n in out.baselines)
        label = method + (" (sigma estimated)" if settings.estimate_noise else "")
        extra = "".join(f"; {k} {v:.3g}" for k, v in out.diagnostics.items())
        print(
            f"| {out.dataset} | {label} | {m['test_psnr']:.2f} | {others} | {out.baseline} | "
            f"{m['test_margin_psnr']:+.2f}{extra} |  <!-- {time.perf_counter() - start:.1f} s -->"
        )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
