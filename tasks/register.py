"""Register stage: log the model as a pyfunc from code, register it, and gate the champion alias.

Every successful training becomes a new version with alias `challenger`. It also becomes `champion`
only if its held-out log p(x) beats the current champion's *on the same dataset version*: when the
champion was evaluated on another version, it is re-evaluated on the candidate's split with the same
K and seed before comparing. The decision and both numbers are recorded as version tags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.errors import ModelError
from tasks import datasets, tracking
from tasks.logs import logger

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_DATASET = "aevb.dataset"
TAG_DATASET_VERSION = "aevb.dataset_version"
TAG_LML = "aevb.test_log_marginal_likelihood"
TAG_DECISION = "aevb.gate.decision"
TAG_CANDIDATE = "aevb.gate.candidate_log_marginal_likelihood"
TAG_CHAMPION = "aevb.gate.champion_log_marginal_likelihood"
TAG_CHAMPION_VERSION = "aevb.gate.champion_version"


def default_model_name(dataset: str) -> str:
    return f"aevb-{dataset}"


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
    if not math.isfinite(candidate_log_marginal_likelihood):
        raise ModelError(
            f"run {run_id}: held-out log p(x) is {candidate_log_marginal_likelihood}; "
            "a non-finite model is never registered"
        )
    name = name or default_model_name(dataset)
    log = logger()
    root = datasets.resolve_data_root(data_root)
    _, example, _ = next(datasets.iter_batches(root, dataset, dataset_version, eval_split, 5))
    model_uri = tracking.log_pyfunc_model(run_id, saved_model_dir, example)
    mv = tracking.register_model(
        model_uri,
        name,
        run_id,
        tags={
            TAG_DATASET: dataset,
            TAG_DATASET_VERSION: dataset_version,
            TAG_LML: candidate_log_marginal_likelihood,
        },
    )
    tracking.set_alias(name, CHALLENGER, mv.version)
    champion = tracking.get_alias(name, CHAMPION)
    champion_lml: float | None = None
    if champion is None:
        promoted, decision = True, "promoted: no champion yet"
    else:
        champion_lml = _champion_score(
            champion, dataset, dataset_version, root, eval_split, eval_num_samples, eval_seed
        )
        promoted = candidate_log_marginal_likelihood > champion_lml
        decision = (
            f"{'promoted' if promoted else 'kept champion'}: candidate "
            f"{candidate_log_marginal_likelihood:.4f} vs champion v{champion.version} {champion_lml:.4f}"
        )
    if promoted:
        tracking.set_alias(name, CHAMPION, mv.version)
    tracking.set_version_tags(
        name,
        mv.version,
        {
            TAG_DECISION: decision,
            TAG_CANDIDATE: candidate_log_marginal_likelihood,
            TAG_CHAMPION: "" if champion_lml is None else champion_lml,
            TAG_CHAMPION_VERSION: "" if champion is None else champion.version,
        },
    )
    log.info("register: %s version %d; %s", name, mv.version, decision)
    return RegisterOutput(
        name,
        mv.version,
        f"models:/{name}/{mv.version}",
        promoted,
        decision,
        candidate_log_marginal_likelihood,
        champion_lml,
    )


def _champion_score(
    champion: tracking.RegisteredVersion,
    dataset: str,
    dataset_version: str,
    root: str,
    split: str,
    num_samples: int,
    seed: int,
) -> float:
    if champion.tags.get(TAG_DATASET_VERSION) == dataset_version and TAG_LML in champion.tags:
        return float(champion.tags[TAG_LML])
    from tasks.evaluate import evaluate

    resolved = tracking.resolve_model(f"models:/{champion.name}/{champion.version}")
    summary = evaluate(
        resolved.saved_model_dir, dataset, dataset_version, root, split, num_samples, seed=seed
    )
    return summary.log_marginal_likelihood


register_task = task(register, name="register", cache_policy=NO_CACHE)
