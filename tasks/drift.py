"""Drift of a new dataset version, measured on the current champion before it is retrained.

    drift = log p(x) of the champion on its own dataset version's held-out split
          - log p(x) of the champion on the new version's same split      (nats per row)

Both are importance-sampling estimates with the same K and seed, so the estimator's bias (it is a
lower bound that tightens with K) cancels to first order and a modest K is enough. Positive: the
new data is less likely under the champion than the data it was trained on (inverted or noisy
images, a new population); near 0: the same distribution. Both scores are cached as the
champion's version tags (`aevb.score.is.<split>.k<K>.seed<seed>.<dataset version>`, what the
registry gate reads too), so a rerun scores nothing again.

No drift is measured when there is no champion, when the champion was trained on this very
version, or when it cannot encode this data (another dataset name or feature shape); the
`DriftCheck.note` says which. The pipeline (flows/pipeline.py) logs the result to the new
training run and refuses to retrain when |drift| exceeds `pipeline.drift_nats`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.errors import PipelineError
from tasks import register, scoring, tracking
from tasks.logs import logger
from tasks.store import datasets

METRIC = "drift_nats"
TAG_NATS = "aevb.drift.nats"
TAG_CHAMPION = "aevb.drift.champion"
TAG_EVALUATION = "aevb.drift.evaluation"
TAG_NOTE = "aevb.drift.note"  # why no drift was measured


@dataclass(frozen=True)
class Drift:
    """The champion's log p(x) on its own dataset version (reference) and on the new one."""

    model_name: str
    champion: int
    reference_version: str
    dataset_version: str
    split: str
    num_samples: int
    seed: int
    reference: float
    current: float

    @property
    def nats(self) -> float:
        """Nats per row the champion lost on the new version (negative: it finds it likelier)."""
        return self.reference - self.current

    def evaluation(self) -> str:
        return (
            f"split={self.split} K={self.num_samples} seed={self.seed} method=is "
            f"from={self.reference_version} to={self.dataset_version}"
        )

    def metrics(self) -> dict[str, float]:
        return {
            METRIC: self.nats,
            "drift_champion_reference_log_marginal_likelihood": self.reference,
            "drift_champion_log_marginal_likelihood": self.current,
        }

    def tags(self) -> dict[str, str]:
        return {
            TAG_NATS: f"{self.nats:.6g}",
            TAG_CHAMPION: f"{self.model_name} v{self.champion}",
            TAG_EVALUATION: self.evaluation(),
        }

    def describe(self) -> str:
        return (
            f"{self.nats:+.3f} nats per row: champion v{self.champion} scores "
            f"{self.reference:.3f} on its own version {self.reference_version[:12]} and "
            f"{self.current:.3f} on {self.dataset_version[:12]} ({self.split} split, "
            f"IS K={self.num_samples}, seed {self.seed})"
        )


@dataclass(frozen=True)
class DriftCheck:
    """A measured drift, or why none was measured (``note``)."""

    drift: Drift | None
    note: str = ""

    def describe(self) -> str:
        return self.drift.describe() if self.drift else f"not measured: {self.note}"

    def tags(self) -> dict[str, str]:
        return self.drift.tags() if self.drift else {TAG_NOTE: self.note}


def measure_drift(
    model_name: str,
    dataset: str,
    dataset_version: str,
    data_root: str,
    split: str,
    num_samples: int,
    seed: int = 0,
    batch_size: int = 500,
) -> DriftCheck:
    """Score ``model_name``'s champion on ``dataset_version`` and on its own training version."""
    if num_samples <= 0:
        return DriftCheck(None, "off (pipeline.drift_samples=0)")
    champion = tracking.get_alias(model_name, register.CHAMPION)
    if champion is None:
        return DriftCheck(None, f"{model_name} has no champion yet")
    own = champion.tags.get(register.TAG_DATASET_VERSION, "")
    if own == dataset_version:
        return DriftCheck(None, f"champion v{champion.version} was trained on this version")
    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, dataset_version)
    why = register.serves_dataset(champion, dataset, manifest.feature_shape)
    if why or not own:
        return DriftCheck(None, f"the champion {why or f'v{champion.version} has no dataset tag'}")
    if not manifest.rows.get(split):
        return DriftCheck(None, f"dataset version {dataset_version[:12]} has no {split} rows")
    scores = []
    for version in (own, dataset_version):
        recorded = register.recorded_score(champion, version, split, num_samples, seed)
        if recorded is None:
            try:
                recorded = _score(
                    champion, root, dataset, version, split, num_samples, seed, batch_size
                )
            except PipelineError as exc:  # e.g. the champion's own version was deleted
                return DriftCheck(None, f"champion v{champion.version} cannot be scored ({exc})")
            register.record_score(
                model_name, champion.version, version, split, num_samples, seed, recorded
            )
        scores.append(recorded)
    drift = Drift(model_name, champion.version, own, dataset_version, split, num_samples, seed,
                  *scores)  # fmt: skip
    logger().info("drift: %s", drift.describe())
    return DriftCheck(drift)


def _score(champion, root, dataset, version, split, num_samples, seed, batch_size=500) -> float:
    from models.saved import load_vae

    logger().info(
        "drift: scoring champion %s v%d on %s@%s (%s split, IS K=%d)",
        champion.name, champion.version, dataset, version[:12], split, num_samples,
    )  # fmt: skip
    resolved = tracking.resolve_model(f"models:/{champion.name}/{champion.version}")
    manifest = datasets.load_manifest(root, dataset, version)
    scored = scoring.evaluate_split(
        load_vae(resolved.saved_model_dir),
        root,
        manifest,
        split,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
    )
    return float(scored.summary["log_marginal_likelihood"])


def log_drift(run_id: str, check: DriftCheck) -> None:
    """The drift as metrics and tags of the new training run (the note when none was measured)."""
    if check.drift is not None:
        tracking.log_metrics(run_id, check.drift.metrics())
    tracking.set_tags(run_id, check.tags())


def refuse_if_drifted(check: DriftCheck, threshold: float) -> None:
    """PipelineError (one line) when ``threshold`` > 0 and |drift| exceeds it."""
    d = check.drift
    if threshold <= 0 or d is None or abs(d.nats) <= threshold:
        return
    raise PipelineError(
        f"pipeline.drift_nats={threshold:g}: dataset version {d.dataset_version[:12]} drifted "
        f"{d.describe()}; nothing was trained or registered. Inspect the new data, or retrain "
        "anyway with pipeline.drift_nats=0 (or a larger threshold)"
    )


drift_task = task(measure_drift, name="drift", cache_policy=NO_CACHE)
