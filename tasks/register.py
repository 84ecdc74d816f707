"""Register stage: log the model as a pyfunc from code, register it, and gate the champion alias.

Every successful training becomes a new version; `challenger` points at the newest one. A version
also becomes `champion` only if its held-out log p(x) beats the current champion's *on the same
dataset version, split, K and seed*: a champion scored otherwise is re-evaluated under the
candidate's settings first (the score is cached as a version tag). The decision and both numbers
are recorded as version tags. A run that failed, or whose score is NaN/inf, is never registered.

Concurrency: two registrations may run at once (two pipelines, two hosts). Scoring happens outside
any lock; the compare-and-set of the aliases happens under `tracking.registry_lock`, and if the
champion changed while we were scoring, we score the new one and try again. So `champion` always
ends at the best of the candidates and `challenger` at the newest version.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.errors import ModelError
from tasks import scoring, tracking
from tasks.logs import logger
from tasks.store import datasets, readers

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_DATASET = "aevb.dataset"
TAG_DATASET_VERSION = "aevb.dataset_version"
TAG_LML = "aevb.test_log_marginal_likelihood"
TAG_DECISION = "aevb.gate.decision"
TAG_CANDIDATE = "aevb.gate.candidate_log_marginal_likelihood"
TAG_CHAMPION = "aevb.gate.champion_log_marginal_likelihood"
TAG_CHAMPION_VERSION = "aevb.gate.champion_version"
TAG_EVAL = "aevb.gate.evaluation"  # "split=test K=1000 seed=0 dataset_version=..."
SCORE_TAG_PREFIX = "aevb.score."  # aevb.score.<split>.k<K>.seed<seed>.<dataset_version> = log p(x)
MAX_GATE_ATTEMPTS = 5


def default_model_name(dataset: str) -> str:
    return f"aevb-{dataset}"


def score_tag(dataset_version: str, split: str, num_samples: int, seed: int) -> str:
    return f"{SCORE_TAG_PREFIX}{split}.k{num_samples}.seed{seed}.{dataset_version}"


@dataclass(frozen=True)
class RegisterOutput:
    name: str
    version: int
    model_uri: str
    promoted: bool
    decision: str
    candidate_log_marginal_likelihood: float
    champion_log_marginal_likelihood: float | None


def register(
    run_id: str,
    saved_model_dir: str,
    dataset: str,
    dataset_version: str,
    candidate_log_marginal_likelihood: float,
    name: str | None = None,
    data_root: str | None = None,
    eval_split: str = C.TEST,
    eval_num_samples: int = 1000,
    eval_seed: int = 0,
) -> RegisterOutput:
    """Register the run's model and run the gate; the score must come from evaluate() with the
    same split, K and seed (they define which champion score it is compared with)."""
    lml = candidate_log_marginal_likelihood
    if not math.isfinite(lml):
        raise ModelError(
            f"run {run_id}: held-out log p(x) is {lml}; a non-finite model is never registered"
        )
    status = tracking.run_status(run_id)
    if status not in ("FINISHED", "RUNNING"):
        raise ModelError(
            f"run {run_id} ended {status}; only a successfully trained model is registered "
            "(train it again: `aevb train --force`)"
        )
    name = name or default_model_name(dataset)
    root = datasets.resolve_data_root(data_root)
    _, example, _ = next(readers.iter_batches(root, dataset, dataset_version, eval_split, 5))
    key = score_tag(dataset_version, eval_split, eval_num_samples, eval_seed)
    model_uri = tracking.log_pyfunc_model(run_id, saved_model_dir, example)
    mv = tracking.register_model(
        model_uri,
        name,
        run_id,
        tags={
            TAG_DATASET: dataset,
            TAG_DATASET_VERSION: dataset_version,
            TAG_LML: lml,
            TAG_EVAL: f"split={eval_split} K={eval_num_samples} seed={eval_seed} "
            f"dataset_version={dataset_version}",
            key: lml,
        },
    )
    scorer = _ChampionScorer(
        dataset, dataset_version, root, eval_split, eval_num_samples, eval_seed
    )
    promoted, decision, champion, champion_lml = _gate(name, mv.version, lml, scorer)
    tracking.set_version_tags(
        name,
        mv.version,
        {
            TAG_DECISION: decision,
            TAG_CANDIDATE: lml,
            TAG_CHAMPION: "" if champion_lml is None else champion_lml,
            TAG_CHAMPION_VERSION: "" if champion is None else champion.version,
        },
    )
    logger().info("register: %s version %d; %s", name, mv.version, decision)
    return RegisterOutput(
        name, mv.version, f"models:/{name}/{mv.version}", promoted, decision, lml, champion_lml
    )


def _gate(
    name: str, version: int, lml: float, scorer: _ChampionScorer
) -> tuple[bool, str, tracking.RegisteredVersion | None, float | None]:
    """Compare-and-set of the aliases under the registry lock; retried if the champion moved."""
    for _ in range(MAX_GATE_ATTEMPTS):
        champion = tracking.get_alias(name, CHAMPION)
        champion_lml = None if champion is None else scorer.score(champion)
        with tracking.registry_lock(name, owner=f"{name} v{version}, pid {os.getpid()}"):
            current = tracking.get_alias(name, CHAMPION)
            if (current and current.version) != (champion and champion.version):
                continue  # another registration moved the champion while we scored it
            challenger = tracking.get_alias(name, CHALLENGER)
            if challenger is None or challenger.version < version:
                tracking.set_alias(name, CHALLENGER, version)
            if champion is None:
                tracking.set_alias(name, CHAMPION, version)
                return True, "promoted: no champion yet", None, None
            promoted = lml > champion_lml
            if promoted:
                tracking.set_alias(name, CHAMPION, version)
            verdict = "promoted" if promoted else "kept champion"
            return (
                promoted,
                f"{verdict}: candidate v{version} {lml:.4f} vs champion v{champion.version} "
                f"{champion_lml:.4f} ({scorer.describe()})",
                champion,
                champion_lml,
            )
    raise ModelError(
        f"register {name} v{version}: the champion kept changing during {MAX_GATE_ATTEMPTS} "
        f"attempts; the version stays registered (alias {CHALLENGER} may not point at it). "
        f"Promote it by hand if it should win: `aevb models promote {name} {version}`"
    )


@dataclass(frozen=True)
class _ChampionScorer:
    """The champion's held-out log p(x) under the candidate's evaluation settings."""

    dataset: str
    dataset_version: str
    root: str
    split: str
    num_samples: int
    seed: int

    def describe(self) -> str:
        return f"{self.split} split, K={self.num_samples}, seed {self.seed}"

    def score(self, champion: tracking.RegisteredVersion) -> float:
        key = score_tag(self.dataset_version, self.split, self.num_samples, self.seed)
        if key in champion.tags:
            return float(champion.tags[key])
        logger().info(
            "register: re-evaluating champion %s v%d on %s@%s (%s)",
            champion.name,
            champion.version,
            self.dataset,
            self.dataset_version[:12],
            self.describe(),
        )
        from models.saved import load_vae

        resolved = tracking.resolve_model(f"models:/{champion.name}/{champion.version}")
        manifest = datasets.load_manifest(self.root, self.dataset, self.dataset_version)
        scored = scoring.evaluate_split(
            load_vae(resolved.saved_model_dir),
            self.root,
            manifest,
            self.split,
            num_samples=self.num_samples,
            batch_size=500,
            seed=self.seed,
        )
        score = float(scored.summary["log_marginal_likelihood"])
        tracking.set_version_tags(champion.name, champion.version, {key: score})
        return score


register_task = task(register, name="register", cache_policy=NO_CACHE)


def promote(name: str, version: int, alias: str = CHAMPION) -> tracking.RegisteredVersion | None:
    """Point ``name@alias`` at ``version`` by hand (under the gate lock); returns the previous one."""
    if tracking.get_version(name, version) is None:
        known = [v.version for v in tracking.list_versions(name)]
        raise ModelError(
            f"registered model {name!r} has no version {version} at {tracking.tracking_uri()} "
            f"(versions: {known or 'none'}); see `aevb models show {name}`"
        )
    with tracking.registry_lock(name, owner=f"aevb models promote, pid {os.getpid()}"):
        previous = tracking.get_alias(name, alias)
        tracking.set_alias(name, alias, version)
    was = f"v{previous.version}" if previous else "none"
    tracking.set_version_tags(
        name, version, {TAG_DECISION: f"set as {alias} by hand (aevb models promote; was {was})"}
    )
    return previous
