"""The registry gate (challenger/champion), its lock, the refusal of failed runs, two processes
registering at once, and `aevb models list|show|promote` - against real temporary SQLite stores."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import constants as C
from models.errors import ModelError, TrackingError
from tasks import register as R
from tasks import tracking
from tests.tasks._mlflow_helpers import save_untrained_model, write_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One store for the module (each test uses its own registered-model name), two dataset
    versions of `regdata` and two untrained models."""
    tmp = tmp_path_factory.mktemp("register")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "data")
    v_old = write_dataset(root, "regdata", seed=0)
    v_new = write_dataset(root, "regdata", seed=1)  # new content: a second version
    yield {
        "root": root,
        "v_old": v_old,
        "v_new": v_new,
        "model_a": save_untrained_model(str(tmp / "model-a"), seed=1),
        "model_b": save_untrained_model(str(tmp / "model-b"), seed=2),
        "mlflow": tmp / "mlflow",
    }
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


def _run(failed: bool = False) -> str:
    run_id = tracking.start_run("aevb-regdata", "candidate")
    tracking.end_run(run_id, failed=failed)
    return run_id


def _register(env, name, lml, model="model_a", version="v_old", **kw) -> R.RegisterOutput:
    return R.register(
        _run(), env[model], "regdata", env[version], lml, name=name, data_root=env["root"], **kw
    )


def _aliases(name: str) -> dict[str, int]:
    return {a: v.version for v in tracking.list_versions(name) for a in v.aliases}


def test_first_version_is_champion_and_challenger_with_its_numbers_as_tags(env):
    out = _register(env, "gate-first", -50.0, eval_num_samples=8)
    assert (out.version, out.promoted, out.champion_log_marginal_likelihood) == (1, True, None)
    assert _aliases("gate-first") == {"champion": 1, "challenger": 1}
    tags = tracking.get_version("gate-first", 1).tags
    assert tags[R.TAG_DECISION] == "promoted: no champion yet"
    assert float(tags[R.TAG_CANDIDATE]) == -50.0 and tags[R.TAG_CHAMPION] == ""
    assert tags[R.TAG_DATASET_VERSION] == env["v_old"]
    assert float(tags[R.score_tag(env["v_old"], C.TEST, 8, 0)]) == -50.0


def test_champion_moves_only_to_a_strictly_better_candidate(env):
    name = "gate-order"
    _register(env, name, -50.0)
    worse = _register(env, name, -60.0)
    assert (worse.version, worse.promoted) == (2, False)
    assert _aliases(name) == {"champion": 1, "challenger": 2}
    tags = tracking.get_version(name, 2).tags
    assert tags[R.TAG_DECISION].startswith("kept champion: candidate v2 -60.0000 vs champion v1")
    assert (float(tags[R.TAG_CANDIDATE]), float(tags[R.TAG_CHAMPION])) == (-60.0, -50.0)
    assert tags[R.TAG_CHAMPION_VERSION] == "1"
    tie = _register(env, name, -50.0)
    assert not tie.promoted and _aliases(name) == {"champion": 1, "challenger": 3}
    better = _register(env, name, -40.0)
    assert better.promoted and better.champion_log_marginal_likelihood == -50.0
    assert _aliases(name) == {"champion": 4, "challenger": 4}


def test_a_champion_scored_elsewhere_is_re_evaluated_on_the_candidates_data(env):
    from tasks.evaluate import evaluate

    name = "gate-reeval"
    # The champion claims a huge score, but on the *old* dataset version: it must not count.
    _register(env, name, 1000.0, model="model_a", version="v_old", eval_num_samples=8)
    want = evaluate(env["model_a"], "regdata", env["v_new"], env["root"], C.TEST, 8, seed=0)
    cand = evaluate(env["model_b"], "regdata", env["v_new"], env["root"], C.TEST, 8, seed=0)
    out = _register(env, name, cand.log_marginal_likelihood, "model_b", "v_new", eval_num_samples=8)
    assert out.champion_log_marginal_likelihood == pytest.approx(
        want.log_marginal_likelihood, rel=1e-6
    )
    assert out.promoted == (cand.log_marginal_likelihood > want.log_marginal_likelihood)
    champion_tags = tracking.get_version(name, 1).tags  # the re-evaluation is cached on v1
    key = R.score_tag(env["v_new"], C.TEST, 8, 0)
    assert float(champion_tags[key]) == pytest.approx(want.log_marginal_likelihood, rel=1e-6)
    assert "K=8" in tracking.get_version(name, 2).tags[R.TAG_DECISION]


def test_a_different_number_of_importance_samples_is_not_compared_either(env):
    from tasks.evaluate import evaluate

    name = "gate-k"
    _register(env, name, 1000.0, eval_num_samples=8)  # same data version, but K=8
    want = evaluate(env["model_a"], "regdata", env["v_old"], env["root"], C.TEST, 4, seed=0)
    out = _register(env, name, -1e6, "model_b", eval_num_samples=4)
    assert out.champion_log_marginal_likelihood == pytest.approx(
        want.log_marginal_likelihood, rel=1e-6
    )


@pytest.mark.parametrize("lml", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_is_never_registered(env, lml):
    name = f"gate-nonfinite-{lml}"
    with pytest.raises(ModelError, match="never registered"):
        _register(env, name, lml)
    assert name not in tracking.list_registered_models()


def test_a_failed_run_is_never_registered(env):
    with pytest.raises(ModelError, match="ended FAILED"):
        R.register(
            _run(failed=True), env["model_a"], "regdata", env["v_old"], -5.0, name="gate-failed",
            data_root=env["root"],
        )  # fmt: skip
    assert "gate-failed" not in tracking.list_registered_models()


def test_diverged_training_fails_its_run_and_cannot_be_registered(env):
    from models.config import ModelConfig, TrainConfig
    from models.errors import TrainingDivergedError
    from tasks.train import train

    config = TrainConfig(epochs=2, batch_size=40, learning_rate=1e30, optimizer="adagrad",
                         jit_compile=False)  # fmt: skip
    with pytest.raises(TrainingDivergedError):
        train("regdata", ModelConfig(latent_dim=2, hidden_sizes=(32,)), config, env["root"])
    runs = tracking.client().search_runs(
        [tracking.experiment_id("aevb-regdata")], "attributes.status = 'FAILED'"
    )
    diverged = [r for r in runs if "aevb.failure" in r.data.tags]
    assert len(diverged) == 1 and "diverged" in diverged[0].data.tags["aevb.failure"]
    with pytest.raises(ModelError, match="ended FAILED"):
        R.register(
            diverged[0].info.run_id, env["model_a"], "regdata", env["v_old"], -5.0,
            name="gate-diverged", data_root=env["root"],
        )  # fmt: skip
    assert "gate-diverged" not in tracking.list_registered_models()


# -- the lock -----------------------------------------------------------------------------------
def test_registry_lock_excludes_a_second_holder_until_released(env):
    with tracking.registry_lock("lock-a"):
        with pytest.raises(TrackingError, match="held"):
            with tracking.registry_lock("lock-a", timeout=0.5):
                pass
        with tracking.registry_lock("lock-b", timeout=0.5):  # other names are independent
            pass
        assert "lock-a" + tracking.LOCK_SUFFIX not in tracking.list_registered_models()
    with tracking.registry_lock("lock-a", timeout=0.5):
        pass


def test_a_stale_lock_of_a_killed_process_is_broken(env):
    tracking.client().create_registered_model("lock-stale" + tracking.LOCK_SUFFIX)
    time.sleep(0.05)
    with tracking.registry_lock("lock-stale", timeout=5, stale_after=0.01):
        pass
    names = [m.name for m in tracking.client().search_registered_models()]
    assert "lock-stale" + tracking.LOCK_SUFFIX not in names


# -- two processes at once ----------------------------------------------------------------------
_WORKER = """
import json, sys, time
from pathlib import Path
go, ready, here, there, pause = sys.argv[1:6]
import tasks.register as R
import tasks.tracking as T
import tensorflow  # noqa: F401  (pay the imports before the barrier)

real_gate, real_set_alias = R._gate, T.set_alias

def gate(*args, **kwargs):  # both processes enter the gate together...
    Path(here).write_text("at the gate")
    while not Path(there).exists():
        time.sleep(0.01)
    return real_gate(*args, **kwargs)

def set_alias(name, alias, version):  # ...and take their time to move the champion
    if alias == "champion":
        time.sleep(float(pause))
    real_set_alias(name, alias, version)

R._gate, T.set_alias = gate, set_alias
Path(ready).write_text("ready")
while not Path(go).exists():
    time.sleep(0.02)
out = R.register(*json.loads(sys.argv[6]))
print(json.dumps({"version": out.version, "promoted": out.promoted}))
"""


@pytest.mark.slow
def test_two_processes_registering_at_once_leave_consistent_aliases(env, tmp_path):
    name = "gate-race"
    _register(env, name, -100.0)  # v1 is the champion to beat
    jobs = {"better": -20.0, "worse": -30.0}
    # Both enter the gate at the same moment and sleep before moving the champion, the worse one
    # longer: without mutual exclusion both would compare with v1 and the worse would write last.
    pauses = {"better": "1.0", "worse": "3.0"}
    other = {"better": "worse", "worse": "better"}
    go = tmp_path / "go"
    procs = {}
    for label, lml in jobs.items():
        args = [_run(), env["model_b"], "regdata", env["v_old"], lml, name, env["root"]]
        argv = [
            str(go), str(tmp_path / label), str(tmp_path / f"gate-{label}"),
            str(tmp_path / f"gate-{other[label]}"), pauses[label], json.dumps(args),
        ]  # fmt: skip
        procs[label] = subprocess.Popen(
            [sys.executable, "-c", _WORKER, *argv], env=dict(os.environ, PYTHONPATH=str(REPO)),
            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 240
    while not all((tmp_path / label).exists() for label in jobs):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs.values()), [
            p.communicate() for p in procs.values()
        ]
        time.sleep(0.1)
    go.write_text("go")
    results = {}
    for label, p in procs.items():
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        results[label] = json.loads(out.strip().splitlines()[-1])
    versions = {results[k]["version"] for k in jobs}
    assert versions == {2, 3}
    aliases = _aliases(name)
    assert aliases["champion"] == results["better"]["version"]
    assert aliases["challenger"] == 3  # the newest candidate
    assert results["better"]["promoted"]
    loser = tracking.get_version(name, results["worse"]["version"]).tags
    # whichever order they ran in, the worse one never ends up champion
    assert not results["worse"]["promoted"] or float(loser[R.TAG_CHAMPION]) == -100.0
    assert "gate-race" + tracking.LOCK_SUFFIX not in [
        m.name for m in tracking.client().search_registered_models()
    ]


# -- the CLI ------------------------------------------------------------------------------------
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from flows.cli import main

    rc = main(["models", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_models_cli_list_show_promote(env, capsys):
    name = "cli-model"
    _register(env, name, -50.0)
    _register(env, name, -60.0)
    rc, out, _ = _cli(capsys, "list")
    assert rc == 0 and f"{name}: 2 version(s); challenger v2, champion v1" in out
    rc, out, _ = _cli(capsys, "show", name)
    assert rc == 0 and "v1 @champion" in out and "v2 @challenger" in out
    assert "gate: kept champion: candidate v2 -60.0000 vs champion v1 -50.0000" in out
    rc, out, _ = _cli(capsys, "show", name, "2", "--json")
    [doc] = [json.loads(line) for line in out.splitlines()]
    assert doc["version"] == 2 and doc["aliases"] == ["challenger"]
    rc, out, _ = _cli(capsys, "promote", name, "2")
    assert rc == 0 and out.strip() == f"{name} v2 is now @champion (was v1)"
    assert _aliases(name) == {"champion": 2, "challenger": 2}
    assert "by hand" in tracking.get_version(name, 2).tags[R.TAG_DECISION]


def test_models_cli_user_errors_exit_2_with_one_line(env, capsys):
    _register(env, "cli-errors", -50.0)
    capsys.readouterr()  # drop MLflow's own log lines from the registration
    for argv, needle in (
        (("promote", "cli-errors", "9"), "has no version 9"),
        (("promote", "cli-errors"), "give the VERSION"),
        (("show", "no-such-model"), "not found"),
        (("show",), "give the registered model NAME"),
    ):
        rc, _, err = _cli(capsys, *argv)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert _aliases("cli-errors") == {"champion": 1, "challenger": 1}


# -- comparability (like with like) -------------------------------------------------------------
def _save(path, feature_shape=(4, 4), likelihood="bernoulli", seed=3) -> str:
    from models.config import ModelConfig
    from models.saved import save_model
    from models.vae import VAE

    config = ModelConfig(
        feature_shape=feature_shape, latent_dim=2, hidden_sizes=(8,), likelihood=likelihood
    )
    return save_model(VAE(config, seed=seed), str(path))


def test_another_dataset_under_the_same_name_is_a_challenger_with_the_reason(env, tmp_path):
    name = "gate-other-dataset"
    _register(env, name, -50.0)
    other_version = write_dataset(env["root"], "otherdata", feature_shape=(3, 3), seed=5)
    model = _save(tmp_path / "other", feature_shape=(3, 3))
    out = R.register(
        _run(), model, "otherdata", other_version, 1e6, name=name, data_root=env["root"]
    )  # a huge score on other data must not win, and nothing is re-scored (no TF traceback)
    assert (out.version, out.promoted, out.comparable) == (2, False, False)
    assert "trained on dataset 'regdata', the candidate on 'otherdata'" in out.reason
    assert _aliases(name) == {"champion": 1, "challenger": 2}
    tags = tracking.get_version(name, 2).tags
    assert tags[R.TAG_COMPARABLE] == "false" and tags[R.TAG_REASON] == out.reason
    assert tags[R.TAG_DECISION] == f"kept champion: not comparable: {out.reason}"
    assert tags[R.TAG_CHAMPION] == "" and tags[R.TAG_CHAMPION_VERSION] == "1"
    assert not [k for k in tracking.get_version(name, 1).tags if "otherdata" in k]


def test_a_density_is_never_compared_with_a_probability(env, tmp_path):
    name = "gate-kind"
    _register(env, name, -50.0)  # Bernoulli: a log-probability
    dense = _save(tmp_path / "cb", likelihood="continuous_bernoulli")
    out = R.register(_run(), dense, "regdata", env["v_old"], 2.0, name=name, data_root=env["root"])
    assert not out.promoted and not out.comparable
    assert "log-probability:bernoulli" in out.reason
    assert "log-density:continuous_bernoulli" in out.reason
    assert tracking.get_version(name, 2).tags[R.TAG_SCORE_KIND] == (
        "log-density:continuous_bernoulli"
    )
    assert _aliases(name)["champion"] == 1


def test_another_feature_shape_of_the_same_dataset_is_not_compared(env, tmp_path):
    name = "gate-shape"
    v44 = write_dataset(env["root"], "shapes", feature_shape=(4, 4), seed=7)
    v28 = write_dataset(env["root"], "shapes", feature_shape=(2, 8), seed=7)
    R.register(_run(), env["model_a"], "shapes", v44, -50.0, name=name, data_root=env["root"])
    model = _save(tmp_path / "m28", feature_shape=(2, 8))
    out = R.register(_run(), model, "shapes", v28, 10.0, name=name, data_root=env["root"])
    assert not out.promoted and "feature shape [4, 4], the candidate [2, 8]" in out.reason


def test_a_registered_but_ungated_version_is_gated_later_from_its_tags(env):
    name = "gate-later"
    _register(env, name, -50.0, eval_num_samples=8)
    args = (_run(), env["model_b"], "regdata", env["v_old"], -40.0, name, env["root"])
    mv = R.register_version(*args, eval_num_samples=8)
    assert R.TAG_DECISION not in mv.tags and _aliases(name) == {"champion": 1, "challenger": 1}
    assert not R.is_gated(mv, env["v_old"], C.TEST, 8, 0)
    out = R.gate_version(name, mv.version, env["root"], eval_num_samples=8)
    assert out.promoted and out.candidate_log_marginal_likelihood == -40.0
    assert _aliases(name) == {"champion": 2, "challenger": 2}
    gated = tracking.get_version(name, 2)
    assert R.is_gated(gated, env["v_old"], C.TEST, 8, 0)
    assert (
        gated.tags[R.TAG_EVAL] == f"split=test K=8 seed=0 method=is dataset_version={env['v_old']}"
    )
    assert not R.is_gated(gated, env["v_old"], C.TEST, 16, 0)  # other settings: not gated yet
    with pytest.raises(ModelError, match="no recorded log p\\(x\\) for split=test K=16"):
        R.gate_version(name, 2, env["root"], eval_num_samples=16)
    again = R.gate_version(name, 2, env["root"], eval_num_samples=8)  # the champion itself
    assert again.promoted and again.decision.startswith("champion: v2 is the champion")


def test_a_champion_registered_without_comparability_tags_is_read_from_its_model(env, tmp_path):
    name = "gate-old-champion"
    _register(env, name, -50.0, eval_num_samples=8)
    c = tracking.client()
    for key in (R.TAG_FEATURE_SHAPE, R.TAG_SCORE_KIND):  # as an older release registered it
        c.delete_model_version_tag(name, "1", key)
    dense = _save(tmp_path / "gauss", likelihood="gaussian")
    args = (_run(), dense, "regdata", env["v_old"], 5.0, name, env["root"])
    out = R.register(*args, eval_num_samples=8)
    assert not out.comparable and "log-probability:bernoulli" in out.reason


def test_a_decision_of_an_older_release_counts_as_gated_under_the_same_settings():
    legacy = "split=test K=8 seed=0 dataset_version=0123456789abcdef"  # no method= (IS only)
    tags = {R.TAG_DECISION: "promoted: no champion yet", R.TAG_EVAL: legacy}
    v = tracking.RegisteredVersion("m", 1, "run", "src", tags, ())
    assert R.is_gated(v, "0123456789abcdef", C.TEST, 8, 0)
    assert not R.is_gated(v, "0123456789abcdef", C.TEST, 16, 0)
    assert not R.is_gated(
        tracking.RegisteredVersion("m", 1, "run", "src", {}, ()), "x", C.TEST, 8, 0
    )
