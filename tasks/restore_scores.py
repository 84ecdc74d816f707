"""How a restoration is scored: PSNR/MSE of the model and of every model-free baseline
(models/restoration_baselines.py) against the clean reference, the best baseline and the honest
margin, and the warnings a restoration's diagnostics call for.

Per split, with metric keys `<split>_<quantity>`:

    psnr, mse                            the model's restoration (means over rows)
    baseline_<slug>_psnr, _mse           each baseline (slug: "median 3x3" -> median_3x3)
    baseline_psnr, baseline_mse          the best baseline (highest PSNR, lowest MSE)
    margin_psnr = psnr - baseline_psnr   dB; negative where a baseline beats the model
    margin_mse  = baseline_mse - mse     negative where a baseline beats the model
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.logs import logger

# Part of a restored table's key: bump it when the baselines or the scores change, so tables
# scored the old way are redone instead of reported as up to date.
SCORING_VERSION = 2
# Metropolis-within-Gibbs accepting fewer proposals than this mixes too slowly to trust.
LOW_ACCEPTANCE = 0.10


def _psnr_mse(x: np.ndarray, clean: np.ndarray, peak: float) -> tuple[float, float]:
    """Sums over rows of per-row PSNR (dB) and MSE (as models.degradations.psnr/mse)."""
    from models.degradations import MIN_MSE

    err = np.mean(np.square(np.asarray(x, np.float64) - np.asarray(clean, np.float64)), axis=1)
    psnr = 20.0 * np.log10(peak) - 10.0 * np.log10(np.maximum(err, MIN_MSE))
    return float(psnr.sum()), float(err.sum())


@dataclass
class SplitScores:
    """Running sums of one split: the model's and each baseline's PSNR and MSE."""

    names: list[str]
    peak: float
    rows: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, restored: np.ndarray, baselines: dict[str, np.ndarray], clean: np.ndarray):
        for name, x in {"model": restored, **baselines}.items():
            self.sums.setdefault(name, np.zeros(2))
            self.sums[name] += _psnr_mse(x, clean, self.peak)
        self.rows += len(clean)

    def metrics(self, split: str) -> dict[str, float]:
        from models.restoration_baselines import slug

        if not self.rows:
            return {}
        mean = {k: v / self.rows for k, v in self.sums.items()}
        out = {f"{split}_psnr": float(mean["model"][0]), f"{split}_mse": float(mean["model"][1])}
        for name in self.names:
            out[f"{split}_baseline_{slug(name)}_psnr"] = float(mean[name][0])
            out[f"{split}_baseline_{slug(name)}_mse"] = float(mean[name][1])
        best_psnr = max(float(mean[n][0]) for n in self.names)
        best_mse = min(float(mean[n][1]) for n in self.names)
        out.update({
            f"{split}_baseline_psnr": best_psnr,
            f"{split}_baseline_mse": best_mse,
            f"{split}_margin_psnr": out[f"{split}_psnr"] - best_psnr,
            f"{split}_margin_mse": best_mse - out[f"{split}_mse"],
        })  # fmt: skip
        return out


def best_baseline(metrics: dict[str, float], names: list[str]) -> str | None:
    """The baseline with the highest mean PSNR over the scored splits (None without metrics)."""
    from models.restoration_baselines import slug

    splits = {k.split("_", 1)[0] for k in metrics}

    def score(name: str) -> float:
        return float(np.mean([metrics[f"{s}_baseline_{slug(name)}_psnr"] for s in splits]))

    return max(names, key=score) if metrics and names else None


def warnings_of(diagnostics: dict[str, float], method: str) -> list[str]:
    """One line per diagnostic that calls for care (today: low MwG acceptance)."""
    rate = diagnostics.get("acceptance_rate")
    if rate is not None and rate < LOW_ACCEPTANCE:
        return [
            f"{method} accepted {rate:.1%} of its proposals (< {LOW_ACCEPTANCE:.0%}): the chain "
            "mixes slowly and its estimate leans on its start; raise --iterations and --burn-in, "
            "or use --method pseudo-gibbs or map"
        ]
    return []


def log_warnings(warnings: list[str]) -> None:
    for line in warnings:
        logger().warning("restore: %s", line)


def mlflow_records(
    metrics: dict[str, float],
    diagnostics: dict[str, float],
    warnings: list[str],
    prefix: str,
    best: str | None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, tags) for the model's MLflow run, every key under ``prefix``
    (`restore_<kind>_<variant>`): `<split>_<prefix>_<q>` and `<prefix>_<diagnostic>`."""
    out = {}
    for key, value in metrics.items():
        split, quantity = key.split("_", 1)
        out[f"{split}_{prefix}_{quantity}"] = value
    out.update({f"{prefix}_{k}": v for k, v in diagnostics.items()})
    tags: dict[str, Any] = {}
    if best is not None:
        tags[f"aevb.{prefix}.best_baseline"] = best
    if "acceptance_rate" in diagnostics:
        tags[f"aevb.{prefix}.low_acceptance"] = str(bool(warnings)).lower()
    if warnings:
        tags[f"aevb.{prefix}.warning"] = " | ".join(warnings)[:4900]
    return out, tags


def log_to_run(run_id: str, result: Any, prefix: str) -> None:
    """A `tasks.restore.RestoreOutput`'s metrics, diagnostics and warnings into the model's run."""
    from tasks import tracking

    metrics, tags = mlflow_records(
        result.metrics, result.diagnostics, result.warnings, prefix, result.baseline
    )
    if metrics:
        tracking.log_metrics(run_id, metrics)
    if tags:
        tracking.set_tags(run_id, tags)
