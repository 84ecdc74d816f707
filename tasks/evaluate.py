"""Evaluate stage: marginal inference of x on a held-out split.

Streams the split through tasks/scoring.py with one of three estimators of log p(x):
`is` (importance sampling, the default and what the registry gate uses), `ais` (annealed
importance sampling, an independent cross-check on the first ``max_points`` rows) or `hmc` (the
paper's Appendix D estimator). Each is a stochastic lower bound or an approximation, see
docs/evaluation.md. With a ``run_id`` it logs to that MLflow run:

- metrics under the DESIGN names: IS as `<split>_<quantity>` (e.g. `test_log_marginal_likelihood`),
  AIS/HMC as `<split>_<method>_<quantity>`, so a cross-check never overwrites the IS numbers, each
  logged at MLflow step = K: an evaluation with another K adds to the metric's history instead of
  replacing it (the run's "latest" value is the one with the largest K);
- the per-point estimates as `evaluation/<split>-<method>-k<K>-per-point.parquet`;

and inside a Prefect run it publishes a table artifact summarising the numbers.

On integer-stored data a continuous decoder is evaluated on a fixed dequantization of the split,
and a Bernoulli decoder trained with train.binarize='dynamic' on a fixed binarization; every
log p(x)/ELBO is then about the stored values (models/discrete.py), with bits/dim beside it, and
`score_kind` (also the run tag `aevb.score_kind`) says which kind of number it is.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from tasks import scoring, tracking
from tasks.store import datasets


@dataclass(frozen=True)
class EvaluationSummary:
    """Dataset-level numbers of one evaluation. ELBO/KL/reconstruction/active units come from IS
    only (None for `ais`/`hmc`, whose `metrics` carry the IS estimate on the same rows instead)."""

    split: str
    num_samples: int
    rows: int
    log_marginal_likelihood: float
    log_marginal_likelihood_stderr: float
    elbo: float | None
    kl: float | None
    reconstruction: float | None
    active_units: int | None
    method: str = "is"
    score_kind: str = ""  # what kind of number log p(x) is (tasks/scoring.py `score_kind`)
    bits_per_dim: float | None = None  # -log p(x) / (D ln 2) where log p(x) is a log-probability
    seed: int = 0
    metrics_logged: dict[str, float] = field(default_factory=dict)
    per_point_artifact: str | None = None  # path in the MLflow run, e.g. evaluation/test-is-...
    table_artifact: str | None = None  # Prefect artifact key

    def metrics(self) -> dict[str, float]:
        """The metric names and values (as logged to MLflow when a run id was given)."""
        if self.metrics_logged:
            return dict(self.metrics_logged)
        s = self.split
        return {
            C.metric_key(s, "log_marginal_likelihood"): self.log_marginal_likelihood,
            C.metric_key(s, "log_marginal_likelihood_stderr"): self.log_marginal_likelihood_stderr,
        }


def evaluate(
    saved_model_dir: str,
    dataset: str,
    version: str | None = None,
    data_root: str | None = None,
    split: str = C.TEST,
    num_samples: int = 1000,
    batch_size: int = 500,
    seed: int = 0,
    run_id: str | None = None,
    *,
    method: scoring.Method = "is",
    max_points: int | None = None,
    options: dict[str, Any] | None = None,
    model_label: str | None = None,
    publish: bool | None = None,
) -> EvaluationSummary:
    """Estimate log p(x) over ``split`` with ``method`` and ``num_samples`` samples per point.

    ``max_points`` limits the rows (AIS/HMC default to the first 20); ``options`` go to the AIS/HMC
    estimator (e.g. num_chains, num_steps). ``publish`` (default: when ``run_id`` is given) creates
    the Prefect table artifact inside a Prefect run.
    """
    from models.saved import load_vae

    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    vae = load_vae(saved_model_dir)
    ev = scoring.evaluate_split(
        vae,
        root,
        manifest,
        split,
        method=method,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        max_points=max_points,
        options=options,
    )
    metrics = ev.metrics()
    label = model_label or (f"runs:/{run_id}/model" if run_id else saved_model_dir)
    artifact = None
    if run_id:
        tracking.log_metrics(run_id, metrics, step=num_samples)
        tag = "aevb.eval_num_samples" if method == "is" else f"aevb.eval_{method}_num_samples"
        tracking.set_tags(run_id, {tag: num_samples, "aevb.score_kind": ev.score_kind})
        provenance = {
            "dataset": manifest.name,
            "dataset_version": manifest.version,
            "model": label,
            "run_id": run_id,
            "seed": seed,
        }
        with tempfile.TemporaryDirectory(prefix="aevb-eval-") as workdir:
            table = scoring.per_point_table(ev, provenance)
            artifact = scoring.log_per_point(run_id, table, ev, workdir)
    key = None
    if publish if publish is not None else bool(run_id):
        key = scoring.publish_table_artifact(ev, manifest.name, label)
    s = ev.summary
    is_method = method == "is"
    return EvaluationSummary(
        split=split,
        num_samples=num_samples,
        rows=len(ev.ids),
        log_marginal_likelihood=float(s["log_marginal_likelihood"]),
        log_marginal_likelihood_stderr=float(s["log_marginal_likelihood_stderr"]),
        elbo=float(s["elbo"]) if is_method else None,
        kl=float(s["kl"]) if is_method else None,
        reconstruction=float(s["reconstruction"]) if is_method else None,
        active_units=int(s["active_units"]) if is_method else None,
        method=method,
        score_kind=ev.score_kind,
        bits_per_dim=float(s["bits_per_dim"]) if "bits_per_dim" in s else None,
        seed=seed,
        metrics_logged=metrics,
        per_point_artifact=artifact,
        table_artifact=key,
    )


evaluate_task = task(evaluate, name="evaluate", cache_policy=NO_CACHE)
