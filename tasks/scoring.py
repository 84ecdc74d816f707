"""Scoring a saved model on a dataset split: the log p(x) estimators fed from the store, per-point
Parquet, Prefect artifacts. Shared by the evaluate stage and the register gate (champion re-score).

The math lives in models/ (`marginal.evaluate_dataset` for importance sampling, `ais.ais_evaluate`,
`hmc_estimator.hmc_evaluate`). This module feeds them a dataset split in stored order while keeping
each row's id and label, turns the results into

- a per-point table (`id`, `split`, `label`, `log_marginal`, `log_marginal_stderr`, and per method
  `elbo_a`, `elbo_b`, `kl`, `reconstruction`, `ess` for IS, or `is_log_marginal` for AIS/HMC),
  written atomically as Parquet with the provenance in key-value metadata and logged to the
  model's MLflow run under `evaluation/`;
- metrics under the DESIGN names: IS as `<split>_<quantity>` (e.g. `test_log_marginal_likelihood`),
  AIS/HMC as `<split>_<method>_<quantity>` so a cross-check never overwrites the IS numbers; the
  evaluate stage logs them with MLflow step = K, so estimates with other K stay in the history;
- `score_kind`: what kind of number a log p(x) is (a log-probability or a log-density, and of
  which likelihood); the registry gate compares only scores of the same kind;
- a Prefect table artifact summarising the numbers, and progress lines (rows, samples/s, ETA)
  plus a Prefect progress artifact while a long evaluation runs.

AIS and the Appendix D estimator run on the first ``max_points`` rows of the split and also compute
the IS estimate on the same rows, so the two can be compared point by point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from models import constants as C
from models.discrete import (
    InputTransform,
    convert_per_point,
    convert_summary,
    data_levels,
    input_transform,
    transform_rows,
)
from models.errors import ConfigError
from tasks import tracking
from tasks.logs import ProgressLogger
from tasks.store import fs, readers
from tasks.store.datasets import DatasetManifest

Method = Literal["is", "ais", "hmc"]
# What a log p(x) is (models/discrete.py `InputTransform.score_kind`): on L-level integer data a
# continuous decoder's (dequantized, converted by -D log L) and a Bernoulli decoder's on binary
# data are "log-probability:<L>-level", comparable across likelihoods; a Bernoulli decoder trained
# with train.binarize="dynamic" scores "log-probability:binarized". Otherwise the legacy kinds: a
# Bernoulli decoder's on [0, 1] intensities, or a log-density of continuous values.
SCORE_KINDS = {
    "bernoulli": "log-probability:bernoulli",
    "gaussian": "log-density:gaussian",
    "continuous_bernoulli": "log-density:continuous_bernoulli",
}
METHODS: tuple[str, ...] = ("is", "ais", "hmc")
ARTIFACT_DIR = "evaluation"
DEFAULT_MAX_POINTS = {"is": None, "ais": 20, "hmc": 20}
_IS_COLUMNS = ("elbo_a", "elbo_b", "kl", "reconstruction", "ess")


@dataclass(frozen=True)
class SplitEvaluation:
    """Per-point arrays (each [N], stored order) and the dataset-level summary of one evaluation."""

    method: str
    split: str
    num_samples: int
    ids: np.ndarray
    labels: np.ndarray  # int64, -1 where the dataset has no label
    per_point: dict[str, np.ndarray]
    summary: dict[str, float]
    options: dict[str, Any] = field(default_factory=dict)
    score_kind: str = ""

    def metrics(self) -> dict[str, float]:
        """Metric names for MLflow: `<split>_<q>` for IS, `<split>_<method>_<q>` for AIS/HMC."""
        prefix = "" if self.method == "is" else f"{self.method}_"
        return {C.metric_key(self.split, prefix + k): float(v) for k, v in self.summary.items()}


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def stream_split(
    data_root: str,
    manifest: DatasetManifest,
    split: str,
    batch_size: int,
    max_points: int | None,
    ids: list,
    labels: list,
    transform: InputTransform | None = None,
) -> Iterator[np.ndarray]:
    """Yield x [B, D] float32 in stored order, appending each batch's ids and labels to the lists;
    with a ``transform``, batch i is dequantized/binarized with the fixed evaluation seed and i."""
    remaining = max_points
    for i, (batch_ids, x, batch_labels) in enumerate(
        readers.iter_batches(data_root, manifest.name, manifest.version, split, batch_size)
    ):
        if remaining is not None:
            if remaining <= 0:
                return
            batch_ids, x, batch_labels = (
                batch_ids[:remaining],
                x[:remaining],
                batch_labels[:remaining],
            )
            remaining -= len(batch_ids)
        ids.append(np.asarray(batch_ids, dtype=object))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
        yield x if transform is None else transform_rows(transform, x, 0, i)


def manifest_levels(manifest: DatasetManifest | None) -> int | None:
    """L of a dataset stored as integers 0..L-1 scaled into [0, 1]; None for continuous data."""
    if manifest is None:
        return None
    return data_levels(manifest.storage_dtype, manifest.scale, manifest.value_range)


def score_kind(
    likelihood: str, manifest: DatasetManifest | None = None, binarize: str = "none"
) -> str:
    """What kind of number log p(x) of a ``likelihood`` decoder on ``manifest``'s data is; scores
    are comparable only when their kinds are equal (`tasks.register`)."""
    kind = input_transform(likelihood, binarize, manifest_levels(manifest)).score_kind
    return kind or SCORE_KINDS.get(likelihood, f"log-density:{likelihood}")


def model_transform(model, manifest: DatasetManifest) -> InputTransform:
    """The `InputTransform` of a loaded model (`models.saved.load_vae` sets ``binarize``)."""
    binarize = getattr(model, "binarize", "none")
    return input_transform(model.config.likelihood, binarize, manifest_levels(manifest))


@dataclass(frozen=True)
class ScoreFacts:
    """What decides whether two models' log p(x) can be compared (the registry gate)."""

    dataset: str
    feature_shape: tuple[int, ...]
    kind: str

    def reason_against(self, other: ScoreFacts, champion: int) -> str:
        """Why ``other`` (the champion's facts) cannot be compared with these; '' if it can."""
        if other.dataset != self.dataset:
            return (
                f"champion v{champion} was trained on dataset {other.dataset!r}, the candidate on "
                f"{self.dataset!r}: their scores are on different data"
            )
        if other.feature_shape != self.feature_shape:
            return (
                f"champion v{champion} has feature shape {list(other.feature_shape)}, the "
                f"candidate {list(self.feature_shape)}"
            )
        if other.kind != self.kind:
            return (
                f"champion v{champion}'s log p(x) is a {other.kind}, the candidate's a "
                f"{self.kind}: different measures (see docs/evaluation.md)"
            )
        return ""


def model_facts(
    saved_model_dir: str, dataset: str, manifest: DatasetManifest | None = None
) -> ScoreFacts:
    """A saved model's facts; its score kind on ``manifest``'s data, else on its training data's
    (config.json's data_levels; models saved before it existed get the legacy kinds)."""
    from models.saved import read_config

    config, meta = read_config(saved_model_dir)
    levels = manifest_levels(manifest) if manifest is not None else meta.get("data_levels")
    kind = input_transform(config.likelihood, meta.get("binarize", "none"), levels).score_kind
    legacy = SCORE_KINDS.get(config.likelihood, f"log-density:{config.likelihood}")
    return ScoreFacts(dataset, tuple(config.feature_shape), kind or legacy)


def quantization_step(manifest: DatasetManifest) -> float | None:
    """Spacing of model inputs for integer-stored data (uint8 / 255 -> 1/255), else None (no bits/dim)."""
    return (
        float(manifest.scale)
        if np.issubdtype(np.dtype(manifest.storage_dtype), np.integer)
        else None
    )


def evaluate_split(
    model,
    data_root: str,
    manifest: DatasetManifest,
    split: str,
    *,
    method: Method = "is",
    num_samples: int = 5000,
    batch_size: int = 100,
    seed: int = 0,
    max_points: int | None = None,
    options: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SplitEvaluation:
    """Evaluate ``model`` on a split with one method; AIS/HMC default to the first 20 rows."""
    from models.marginal import evaluate_dataset

    if method not in METHODS:
        raise ConfigError(
            f"evaluate method={method!r} is not allowed; choose one of {', '.join(METHODS)}"
        )
    if split not in manifest.rows:
        raise ConfigError(
            f"split={split!r} is not in dataset {manifest.name}; it has {sorted(manifest.rows)}"
        )
    max_points = DEFAULT_MAX_POINTS[method] if max_points is None else max_points
    total = manifest.rows[split] if max_points is None else min(max_points, manifest.rows[split])
    if progress is None:
        per_row = num_samples if method == "is" else 1
        progress = ProgressLogger(total, f"evaluate[{method}] {manifest.name}/{split}", per_row)
    ids: list = []
    labels: list = []
    options = dict(options or {})
    transform = model_transform(model, manifest)
    stream = (data_root, manifest, split, batch_size, max_points, ids, labels, transform)
    if method == "is":
        result = evaluate_dataset(
            model,
            stream_split(*stream),
            num_samples,
            seed=seed,
            progress=progress,
            quantization_step=None
            if transform.kind == "dequantize"
            else quantization_step(manifest),
        )
        per_point = {
            "log_marginal": result.log_marginal,
            "log_marginal_stderr": result.log_marginal_stderr,
        }
        per_point.update({k: getattr(result, k) for k in _IS_COLUMNS})
        summary = result.summary()
    else:
        rows = list(stream_split(*stream))
        per_point, summary = _cross_check(
            model, method, np.concatenate(rows), num_samples, seed, options, progress
        )
    if transform.kind != "none":  # to numbers about the stored data (models/discrete.py)
        per_point = convert_per_point(per_point, transform, manifest.input_dim)
        summary = convert_summary(summary, transform, manifest.input_dim)
    return SplitEvaluation(
        method,
        split,
        num_samples,
        np.concatenate(ids),
        np.concatenate(labels),
        per_point,
        summary,
        options,
        score_kind(model.config.likelihood, manifest, getattr(model, "binarize", "none")),
    )


def _cross_check(
    model,
    method: str,
    x: np.ndarray,
    num_samples: int,
    seed: int,
    options: dict[str, Any],
    progress: Callable[[int], None],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """AIS or App. D on the chosen rows x [N, D], plus IS with ``num_samples`` on the same rows."""
    import tensorflow as tf

    from models.ais import ais_evaluate
    from models.hmc_estimator import hmc_evaluate
    from models.marginal import evaluate_dataset

    estimate = ais_evaluate if method == "ais" else hmc_evaluate
    small = 10  # AIS/HMC state is [chains, batch, latent]: small batches keep it cache-sized
    batches = [x[i : i + small] for i in range(0, len(x), small)]
    points = estimate(
        model, batches, tf.constant([seed, 0], tf.int32), progress=progress, **options
    )
    is_result = evaluate_dataset(
        model, [x[i : i + 100] for i in range(0, len(x), 100)], num_samples, seed=seed
    )
    per_point = {
        "log_marginal": points.log_marginal,
        "log_marginal_stderr": points.stderr,
        "is_log_marginal": is_result.log_marginal,
    }
    summary = points.summary()
    summary["is_log_marginal_likelihood"] = float(np.mean(is_result.log_marginal))
    summary["minus_is_log_marginal_likelihood"] = summary["log_marginal_likelihood"] - float(
        np.mean(is_result.log_marginal)
    )  # a difference: the discrete conversion cancels in it
    return per_point, summary


def per_point_table(
    evaluation: SplitEvaluation, provenance: Mapping[str, Any] | None = None
) -> pa.Table:
    """One row per evaluated data point; provenance and method settings in the schema metadata."""
    labels = evaluation.labels
    columns = {
        C.COL_ID: pa.array([str(i) for i in evaluation.ids], pa.string()),
        C.COL_SPLIT: pa.array([evaluation.split] * len(labels), pa.string()),
        C.COL_LABEL: pa.array(labels, pa.int64(), mask=labels < 0),
    }
    columns.update(
        {k: pa.array(np.asarray(v, np.float64)) for k, v in evaluation.per_point.items()}
    )
    meta = {
        "method": evaluation.method,
        "num_samples": evaluation.num_samples,
        "score_kind": evaluation.score_kind,
        "options": evaluation.options,
        **(provenance or {}),
    }
    return pa.table(columns).replace_schema_metadata({f"aevb.{k}": str(v) for k, v in meta.items()})


def artifact_name(evaluation: SplitEvaluation) -> str:
    """`<split>-<method>-k<K>-per-point.parquet`: an evaluation with another K keeps its own."""
    e = evaluation
    return f"{e.split}-{e.method}-k{e.num_samples}-per-point.parquet"


def log_per_point(run_id: str, table: pa.Table, evaluation: SplitEvaluation, workdir: str) -> str:
    """Write the per-point Parquet under ``workdir`` and log it to the run as `evaluation/<name>`."""
    path = os.path.join(workdir, artifact_name(evaluation))
    fs.write_parquet(table, path)
    tracking.log_artifact(run_id, path, ARTIFACT_DIR)
    return f"{ARTIFACT_DIR}/{artifact_name(evaluation)}"


def summary_rows(evaluation: SplitEvaluation) -> list[dict[str, str]]:
    """The summary as (quantity, value) rows for a table artifact or the console."""
    return [
        {"metric": name, "value": f"{value:.6g}"}
        for name, value in sorted(evaluation.metrics().items())
    ]


def publish_table_artifact(evaluation: SplitEvaluation, dataset: str, model: str) -> str | None:
    """A Prefect table artifact `aevb-evaluation-<dataset>-<split>-<method>`; None outside a Prefect run."""
    if not _in_prefect_run():
        return None
    from prefect.artifacts import create_table_artifact

    key = f"aevb-evaluation-{dataset}-{evaluation.split}-{evaluation.method}".lower().replace(
        "_", "-"
    )
    key = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in key)
    description = (
        f"log p(x) of {model} on {dataset}/{evaluation.split} by {evaluation.method.upper()} "
        f"(K={evaluation.num_samples}); a stochastic lower bound"
    )
    create_table_artifact(table=summary_rows(evaluation), key=key, description=description)
    return key


__all__ = [
    "METHODS",
    "ScoreFacts",
    "manifest_levels",
    "model_transform",
    "ProgressLogger",
    "SplitEvaluation",
    "evaluate_split",
    "model_facts",
    "score_kind",
    "log_per_point",
    "per_point_table",
    "publish_table_artifact",
    "quantization_step",
    "summary_rows",
]
