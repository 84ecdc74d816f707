"""Evaluate stage: marginal inference of x on a held-out split.

Reports the importance-sampled estimate of log p(x) (a stochastic lower bound, see
models/marginal.py) as mean +- standard error over datapoints, plus the ELBO, KL and
reconstruction term, and logs them to the model's MLflow run under the DESIGN metric names.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from tasks import datasets, tracking
from tasks.logs import logger


@dataclass(frozen=True)
class EvaluationSummary:
    split: str
    num_samples: int
    rows: int
    log_marginal_likelihood: float
    log_marginal_likelihood_stderr: float
    elbo: float
    kl: float
    reconstruction: float
    active_units: int

    def metrics(self) -> dict[str, float]:
        s = self.split
        return {
            C.metric_key(s, "log_marginal_likelihood"): self.log_marginal_likelihood,
            C.metric_key(s, "log_marginal_likelihood_stderr"): self.log_marginal_likelihood_stderr,
            C.metric_key(s, "elbo"): self.elbo,
            C.metric_key(s, "kl"): self.kl,
            C.metric_key(s, "reconstruction"): self.reconstruction,
            C.metric_key(s, "active_units"): float(self.active_units),
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
) -> EvaluationSummary:
    """IS estimate of log p(x) with ``num_samples`` samples per point over ``split``."""
    from models.marginal import evaluate_dataset
    from models.saved import load_vae

    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    vae = load_vae(saved_model_dir)
    log = logger()
    total = manifest.rows[split]

    def progress(done: int) -> None:
        log.info("evaluate: %d/%d rows of %s (K=%d)", done, total, split, num_samples)

    batches = datasets.make_tf_dataset(root, manifest.name, manifest.version, split, batch_size)
    result = evaluate_dataset(vae, batches, num_samples, seed=seed, progress=progress)
    s = result.summary()
    summary = EvaluationSummary(
        split=split,
        num_samples=num_samples,
        rows=result.num_points,
        log_marginal_likelihood=s["log_marginal_likelihood"],
        log_marginal_likelihood_stderr=s["log_marginal_likelihood_stderr"],
        elbo=s["elbo"],
        kl=s["kl"],
        reconstruction=s["reconstruction"],
        active_units=result.active_units,
    )
    if run_id:
        tracking.log_metrics(run_id, {C.metric_key(split, k): v for k, v in s.items()})
        tracking.set_tags(run_id, {"aevb.eval_num_samples": num_samples})
    return summary


evaluate_task = task(evaluate, name="evaluate", cache_policy=NO_CACHE)
