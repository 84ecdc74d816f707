"""Register stage: register the run's logged pyfunc model and gate the champion alias.

Every successful training becomes a new version; `challenger` points at the newest one. A version
also becomes `champion` only if its held-out log p(x) beats the current champion's, compared like
with like:

- the same dataset (name) and feature shape, and the same kind of number (`scoring.score_kind`: a
  Bernoulli log-probability is never compared with a Gaussian or continuous-Bernoulli
  log-density). Otherwise the candidate stays challenger, the decision says why
  (`aevb.gate.comparable = false`, `aevb.gate.reason`), and nothing is re-scored;
- the same dataset version, split, K, seed and method: a champion scored otherwise is
  re-evaluated under the candidate's settings first (the score is cached as a version tag).

The decision, both numbers and what they were measured on are version tags. A run that failed,
or whose score is NaN/inf, is never registered. `register` = `register_version` + `gate_version`;
a version registered by a run that was killed before its gate is gated later by `gate_version`
alone (the pipeline's rerun does that), from the score in its tags.

Concurrency: two registrations may run at once (two pipelines, two hosts). Scoring happens outside
any lock; the compare-and-set of the aliases happens under `tracking.registry_lock`, and if the
champion changed while we were scoring, we score the new one and try again. So `champion` always
ends at the best of the candidates and `challenger` at the newest version.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.errors import ModelError, PipelineError
from tasks import scoring, tracking
from tasks.logs import logger
from tasks.store import datasets, publish, readers

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_DATASET = "aevb.dataset"
TAG_DATASET_VERSION = "aevb.dataset_version"
TAG_FEATURE_SHAPE = "aevb.feature_shape"  # JSON list, e.g. [8, 8]
TAG_SCORE_KIND = "aevb.score_kind"  # what kind of number its log p(x) is (scoring.score_kind)
TAG_LML = "aevb.test_log_marginal_likelihood"
TAG_DECISION = "aevb.gate.decision"
TAG_CANDIDATE = "aevb.gate.candidate_log_marginal_likelihood"
TAG_CHAMPION = "aevb.gate.champion_log_marginal_likelihood"
TAG_CHAMPION_VERSION = "aevb.gate.champion_version"
TAG_EVAL = "aevb.gate.evaluation"  # "split=test K=1000 seed=0 method=is dataset_version=..."
TAG_COMPARABLE = "aevb.gate.comparable"  # "true" | "false"
TAG_REASON = "aevb.gate.reason"  # why the two were not comparable ("" when they were)
SCORE_TAG_PREFIX = "aevb.score."  # aevb.score.<method>.<split>.k<K>.seed<seed>.<dataset_version>
METHOD = "is"  # the gate's estimator
MAX_GATE_ATTEMPTS = 5


def default_model_name(dataset: str) -> str:
    return f"aevb-{dataset}"


def score_tag(
    dataset_version: str, split: str, num_samples: int, seed: int, method: str = METHOD
) -> str:
    return f"{SCORE_TAG_PREFIX}{method}.{split}.k{num_samples}.seed{seed}.{dataset_version}"


def _legacy_score_tag(dataset_version: str, split: str, num_samples: int, seed: int) -> str:
    return f"{SCORE_TAG_PREFIX}{split}.k{num_samples}.seed{seed}.{dataset_version}"  # IS, older


def evaluation_key(dataset_version: str, split: str, num_samples: int, seed: int) -> str:
    """What a gate decision was measured on (tag `aevb.gate.evaluation`)."""
    return (
        f"split={split} K={num_samples} seed={seed} method={METHOD} "
        f"dataset_version={dataset_version}"
    )


def recorded_score(
    version: tracking.RegisteredVersion, dataset_version: str, split: str, k: int, seed: int
) -> float | None:
    """The version's log p(x) under these settings, if its tags hold it."""
    for key in (
        score_tag(dataset_version, split, k, seed),
        _legacy_score_tag(dataset_version, split, k, seed),
    ):
        if key in version.tags:
            return float(version.tags[key])
    return None


def is_gated(
    version: tracking.RegisteredVersion, dataset_version: str, split: str, k: int, seed: int
) -> bool:
    """True if the version's gate decision was taken under exactly these evaluation settings
    (older releases wrote the same key without `method=`: IS was the only method)."""
    key = evaluation_key(dataset_version, split, k, seed)
    legacy = key.replace(f" method={METHOD}", "")
    return TAG_DECISION in version.tags and version.tags.get(TAG_EVAL) in (key, legacy)


@dataclass(frozen=True)
class RegisterOutput:
    name: str
    version: int
    model_uri: str
    promoted: bool
    decision: str
    candidate_log_marginal_likelihood: float
    champion_log_marginal_likelihood: float | None
    comparable: bool = True
    reason: str = ""


def register_version(
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
) -> tracking.RegisteredVersion:
    """Register the run's model (runs:/<run id>/model; if training logged none, ``saved_model_dir``
    is logged first) as a new version (not gated yet), its score, dataset and score kind as tags."""
    lml = candidate_log_marginal_likelihood
    if not math.isfinite(lml):
        raise ModelError(
            f"run {run_id}: held-out log p(x) is {lml}; a non-finite model is never registered"
        )
    if (status := tracking.run_status(run_id)) not in ("FINISHED", "RUNNING"):
        raise ModelError(
            f"run {run_id} ended {status}; only a successfully trained model is registered "
            "(train it again: `aevb train --force`)"
        )
    name = name or default_model_name(dataset)
    root = datasets.resolve_data_root(data_root)
    facts = scoring.model_facts(saved_model_dir, dataset)
    model_uri = tracking.logged_model_uri(run_id)  # logged by training (tasks/train.py)
    if model_uri is None:  # older releases, runs made outside `train`: log it now
        _, example, _ = next(readers.iter_batches(root, dataset, dataset_version, eval_split, 5))
        model_uri = tracking.log_pyfunc_model(run_id, saved_model_dir, example)
    publish.fault_point("register_before_version")
    mv = tracking.register_model(
        model_uri,
        name,
        run_id,
        tags={
            TAG_DATASET: dataset,
            TAG_DATASET_VERSION: dataset_version,
            TAG_FEATURE_SHAPE: json.dumps(list(facts.feature_shape)),
            TAG_SCORE_KIND: facts.kind,
            TAG_LML: lml,
            score_tag(dataset_version, eval_split, eval_num_samples, eval_seed): lml,
        },
    )
    publish.fault_point("register_before_gate")
    return mv


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
    settings = dict(eval_split=eval_split, eval_num_samples=eval_num_samples, eval_seed=eval_seed)
    lml = candidate_log_marginal_likelihood
    mv = register_version(
        run_id, saved_model_dir, dataset, dataset_version, lml, name, data_root, **settings
    )
    return gate_version(mv.name, mv.version, data_root, **settings)


def gate_version(
    name: str,
    version: int,
    data_root: str | None = None,
    eval_split: str = C.TEST,
    eval_num_samples: int = 1000,
    eval_seed: int = 0,
    score: float | None = None,
) -> RegisterOutput:
    """Gate a registered version (again) under these evaluation settings, from its tags: its
    score must be recorded for them, or given as ``score`` (then it is recorded first)."""
    mv = tracking.get_version(name, version)
    if mv is None:
        raise ModelError(f"registered model {name!r} has no version {version}")
    dataset, dsv = mv.tags.get(TAG_DATASET, ""), mv.tags.get(TAG_DATASET_VERSION, "")
    if score is not None:
        record_score(name, version, dsv, eval_split, eval_num_samples, eval_seed, score)
        mv = tracking.get_version(name, version)
    lml = recorded_score(mv, dsv, eval_split, eval_num_samples, eval_seed)
    if lml is None:
        raise ModelError(
            f"{name} v{version} has no recorded log p(x) for split={eval_split} "
            f"K={eval_num_samples} seed={eval_seed}; evaluate it first"
        )
    root = datasets.resolve_data_root(data_root)
    facts = _version_facts(mv, root)
    scorer = _ChampionScorer(dataset, dsv, root, eval_split, eval_num_samples, eval_seed)
    out = _gate(name, version, lml, facts, scorer)
    promoted, decision, champion, champion_lml, reason = out
    tracking.set_version_tags(
        name,
        version,
        {
            TAG_DECISION: decision,
            TAG_CANDIDATE: lml,
            TAG_CHAMPION: "" if champion_lml is None else champion_lml,
            TAG_CHAMPION_VERSION: "" if champion is None else champion.version,
            TAG_EVAL: evaluation_key(dsv, eval_split, eval_num_samples, eval_seed),
            TAG_COMPARABLE: "false" if reason else "true",
            TAG_REASON: reason,
        },
    )
    logger().info("register: %s version %d; %s", name, version, decision)
    uri = f"models:/{name}/{version}"
    return RegisterOutput(
        name, version, uri, promoted, decision, lml, champion_lml, not reason, reason
    )


def version_of_run(name: str, run_id: str) -> tracking.RegisteredVersion | None:
    """The newest version of ``name`` registered from ``run_id`` (None: not registered)."""
    mine = [v for v in tracking.list_versions(name) if v.run_id == run_id]
    return mine[-1] if mine else None


def serves_dataset(version: tracking.RegisteredVersion, dataset: str, shape: tuple) -> str:
    """Why ``version`` cannot encode ``dataset`` rows of feature ``shape`` ('' if it can)."""
    trained_on = version.tags.get(TAG_DATASET, dataset)
    if trained_on != dataset:
        return f"v{version.version} was trained on dataset {trained_on!r}, not {dataset!r}"
    if TAG_FEATURE_SHAPE in version.tags:
        own = tuple(json.loads(version.tags[TAG_FEATURE_SHAPE]))
        if own != tuple(shape):
            return f"v{version.version} takes feature shape {list(own)}, the data {list(shape)}"
    return ""


def record_score(
    name: str, version: int, dataset_version: str, split: str, k: int, seed: int, lml: float
) -> None:
    """Cache a version's log p(x) under these settings (what `gate_version` compares)."""
    if not math.isfinite(lml):
        raise ModelError(f"{name} v{version}: log p(x) is {lml}; a non-finite score is not gated")
    tracking.set_version_tags(name, version, {score_tag(dataset_version, split, k, seed): lml})


def _version_facts(mv: tracking.RegisteredVersion, root: str) -> scoring.ScoreFacts:
    """A version's comparability facts: from its tags, else (older versions) from its model."""
    tags, dataset = mv.tags, mv.tags.get(TAG_DATASET, "")
    if TAG_FEATURE_SHAPE in tags and TAG_SCORE_KIND in tags:
        shape = tuple(int(d) for d in json.loads(tags[TAG_FEATURE_SHAPE]))
        return scoring.ScoreFacts(dataset, shape, tags[TAG_SCORE_KIND])
    resolved = tracking.resolve_model(f"models:/{mv.name}/{mv.version}")
    return scoring.model_facts(resolved.saved_model_dir, dataset)


def _gate(name: str, version: int, lml: float, facts: scoring.ScoreFacts, scorer: _ChampionScorer):
    """Compare-and-set of the aliases under the registry lock; retried if the champion moved.
    Returns (promoted, decision, champion, champion score, reason it was not comparable)."""
    for _ in range(MAX_GATE_ATTEMPTS):
        champion = tracking.get_alias(name, CHAMPION)
        reason, champion_lml = "", None
        if champion is not None and champion.version != version:
            reason, champion_lml = scorer.compare(champion, facts)
        with tracking.registry_lock(name, owner=f"{name} v{version}, pid {os.getpid()}"):
            current = tracking.get_alias(name, CHAMPION)
            if (current and current.version) != (champion and champion.version):
                continue  # another registration moved the champion while we scored it
            challenger = tracking.get_alias(name, CHALLENGER)
            if challenger is None or challenger.version < version:
                tracking.set_alias(name, CHALLENGER, version)
            if champion is None:
                tracking.set_alias(name, CHAMPION, version)
                return True, "promoted: no champion yet", None, None, ""
            if champion.version == version:
                return (
                    True,
                    f"champion: v{version} is the champion ({scorer.describe()})",
                    None,
                    None,
                    "",
                )
            if reason:
                return False, f"kept champion: not comparable: {reason}", champion, None, reason
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
                "",
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
        return f"{self.split} split, K={self.num_samples}, seed {self.seed}, {METHOD.upper()}"

    def compare(
        self, champion: tracking.RegisteredVersion, facts: scoring.ScoreFacts
    ) -> tuple[str, float | None]:
        """('' , champion score) when comparable with ``facts``, else (reason, None)."""
        try:
            reason = facts.reason_against(_version_facts(champion, self.root), champion.version)
            if reason:
                return reason, None
            return "", self.score(champion)
        except PipelineError as exc:  # the champion's model cannot be loaded or scored here
            return f"champion v{champion.version} cannot be scored on this data ({exc})", None

    def score(self, champion: tracking.RegisteredVersion) -> float:
        recorded = recorded_score(
            champion, self.dataset_version, self.split, self.num_samples, self.seed
        )
        if recorded is not None:
            return recorded
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
        key = score_tag(self.dataset_version, self.split, self.num_samples, self.seed)
        tracking.set_version_tags(champion.name, champion.version, {key: score})
        return score


register_task = task(register, name="register", cache_policy=NO_CACHE)
gate_task = task(gate_version, name="gate", cache_policy=NO_CACHE)


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
