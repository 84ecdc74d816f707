"""Drift, recorded (flows/pipeline.py drift_step, tasks/drift.py), on real stores:

1. a champion is trained on the digits (split seed 0);
2. the same digits split another way (a new version, the same distribution): a small drift;
3. the digits inverted (16 - x) under the same name, with `pipeline.drift_nats` set: refused in
   one line, exit 2, no MLflow run and no model version added;
4. the inverted digits without the threshold: trained, a large drift logged to the new run.

The drift must equal the champion's IS log p(x) on its own version minus on the new one,
recomputed here independently with the same K and seed.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from tests.helpers import env

K = 16
FAST = [
    "train.epochs=2",
    "train.jit_compile=false",
    "model.hidden_sizes=[32]",
    "model.latent_dim=2",
    "evaluate.num_samples=8",
    "export.splits=['test']",
    "pipeline.retry_delay_seconds=0",
    f"pipeline.drift_samples={K}",
]


def _inverted_digits(path) -> str:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (16 - bunch.data.reshape(-1, 8, 8)).astype(np.uint8)
    ids = np.asarray([f"digits-{i:04d}" for i in range(len(x))])
    np.savez(path, x=x, y=bunch.target, ids=ids)
    return str(path)


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    from flows.cli import main
    from flows.config import load_config
    from flows.pipeline import pipeline_flow
    from tasks import tracking

    tmp = tmp_path_factory.mktemp("drift")
    root = str(tmp / "data")
    base = [*FAST, f"data.data_root={root!r}"]
    inverted = [
        f"data.source={_inverted_digits(tmp / 'inverted.npz')!r}",
        "data.name=digits",
        "data.options={scale = 0.0625}",
    ]
    out: dict = {"root": root}
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp / "mlflow")):
        out["first"] = pipeline_flow(load_config(overrides=base))
        out["resplit"] = pipeline_flow(load_config(overrides=[*base, "data.split_seed=1"]))
        out["champion_before"] = tracking.get_alias("aevb-digits", "champion")
        out["versions_before"] = tracking.list_versions("aevb-digits")
        out["runs_before"] = _runs()
        # A threshold well above the same-distribution drift.
        threshold = max(10 * abs(out["resplit"].drift_nats), 2.0)
        out["threshold"] = threshold
        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            out["refused_rc"] = main(
                ["pipeline", *base, *inverted, f"pipeline.drift_nats={threshold}"]
            )
        out["refused_err"] = err.getvalue()
        out["versions_after_refusal"] = tracking.list_versions("aevb-digits")
        out["runs_after_refusal"] = _runs()
        out["inverted"] = pipeline_flow(load_config(overrides=[*base, *inverted]))
        out["inverted_run"] = tracking.client().get_run(out["inverted"].run_id)
        out["recomputed"] = _recompute(out, root)
        yield out


def _runs() -> list[str]:
    from tasks import tracking

    c = tracking.client()
    ids = [e.experiment_id for e in c.search_experiments()]
    return sorted(r.info.run_id for r in c.search_runs(ids))


def _recompute(out, root) -> dict[str, float]:
    """The champion's IS log p(x) on both versions, computed here with the same K and seed."""
    from tasks import tracking
    from tasks.evaluate import evaluate

    champion = out["champion_before"]
    model = tracking.resolve_model(f"models:/aevb-digits/{champion.version}").saved_model_dir
    own = champion.tags["aevb.dataset_version"]
    return {
        version: evaluate(model, "digits", version, root, "test", K, 500, 0).log_marginal_likelihood
        for version in (own, out["inverted"].dataset_version)
    }


def test_no_champion_no_drift(runs):
    s = runs["first"]
    assert s.drift_nats is None and "no champion" in s.drift


def test_same_distribution_gives_a_small_drift(runs):
    s = runs["resplit"]
    assert s.dataset_created and s.drift_nats is not None
    assert "drift" in s.drift or "nats per row" in s.drift
    assert abs(s.drift_nats) < abs(runs["inverted"].drift_nats) / 5


def test_a_shifted_version_is_refused_over_the_threshold(runs):
    assert runs["refused_rc"] == 2
    err = runs["refused_err"].strip()
    assert err.count("\n") == 0, err
    assert err.startswith("aevb pipeline: error: pipeline.drift_nats=")
    assert "nothing was trained or registered" in err
    assert [v.version for v in runs["versions_after_refusal"]] == [
        v.version for v in runs["versions_before"]
    ]
    assert runs["runs_after_refusal"] == runs["runs_before"]  # no MLflow run either


def test_a_shifted_version_drifts_far_and_the_drift_is_logged(runs):
    s, run = runs["inverted"], runs["inverted_run"]
    assert s.drift_nats > runs["threshold"]  # what the refusal saw
    assert run.data.metrics["drift_nats"] == pytest.approx(s.drift_nats)
    assert float(run.data.tags["aevb.drift.nats"]) == pytest.approx(s.drift_nats, rel=1e-5)
    champion = runs["champion_before"]
    assert run.data.tags["aevb.drift.champion"] == f"aevb-digits v{champion.version}"
    assert f"K={K}" in run.data.tags["aevb.drift.evaluation"]


def test_drift_is_the_difference_of_the_champions_two_scores(runs):
    s, scores = runs["inverted"], runs["recomputed"]
    own = runs["champion_before"].tags["aevb.dataset_version"]
    expected = scores[own] - scores[s.dataset_version]
    assert s.drift_nats == pytest.approx(expected, abs=1e-4)
    run = runs["inverted_run"]
    assert run.data.metrics["drift_champion_log_marginal_likelihood"] == pytest.approx(
        scores[s.dataset_version], abs=1e-4
    )


def test_the_summary_prints_the_drift(runs):
    from flows.summary import format_summary

    text = format_summary(runs["inverted"], "sqlite:///x.db")
    (line,) = [ln for ln in text.splitlines() if "drift vs champion" in ln]
    assert f"{runs['inverted'].drift_nats:+.3f} nats per row" in line


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["pipeline.drift_nats=-1"], "pipeline.drift_nats=-1 must be a finite number >= 0"),
        (["pipeline.drift_nats=nan"], "pipeline.drift_nats=nan must be a finite number"),
        (["pipeline.drift_samples=-3"], "pipeline.drift_samples=-3 must be an integer >= 0"),
        (["pipeline.drift_samples=0", "pipeline.drift_nats=5"], "needs the drift measured"),
    ],
)
def test_drift_settings_are_validated(overrides, needle):
    from flows.config import load_config
    from models.errors import ConfigError

    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(overrides=overrides)
