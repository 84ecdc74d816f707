"""A change to any setting that changes an output re-runs the stages it affects (evaluate and
export settings included), and the gate compares only like with like through the pipeline.

One module-scoped sequence on the same stores: a first run; the same again (SKIPPED); another K
(re-evaluated and re-gated, the first estimate kept); more export splits (re-exported); another
dataset with another feature shape under the same registered name (a challenger with the reason,
no traceback, and no export of a champion that cannot encode it).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from tests.helpers import env

FAST = [
    "train.epochs=1",
    "train.jit_compile=false",
    "model.hidden_sizes=[16]",
    "model.latent_dim=2",
    "evaluate.num_samples=8",
    "export.splits=['test']",
    "pipeline.retry_delay_seconds=0",
    "register.model_name=shared",
]


def _pipeline(*argv: str) -> tuple[int, str, str]:
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["pipeline", *argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    from tasks import tracking

    tmp = tmp_path_factory.mktemp("settings")
    root = str(tmp / "data")
    csv = tmp / "sensors.csv"
    rng = np.random.default_rng(0)
    rows = ["a,b,c"] + [",".join(f"{v:.3f}" for v in rng.random(3)) for _ in range(300)]
    csv.write_text("\n".join(rows) + "\n")
    base = ["digits", "--data-root", root, *FAST]
    out: dict = {"root": root}
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp / "mlflow")):
        out["first"] = _pipeline(*base)
        out["same"] = _pipeline(*base)
        out["other_k"] = _pipeline(*base, "evaluate.num_samples=16")
        out["run_id"] = tracking.get_version("shared", 1).run_id
        history = tracking.client().get_metric_history(
            out["run_id"], "test_log_marginal_likelihood"
        )
        out["history"] = {m.step: m.value for m in history}
        out["more_splits"] = _pipeline(
            *base, "evaluate.num_samples=16", "export.splits=['test','valid']"
        )
        out["other_data"] = _pipeline(str(csv), "--name", "sensors", "--data-root", root, *FAST)
        out["versions"] = tracking.list_versions("shared")
        out["champion"] = tracking.get_alias("shared", "champion")
    yield out


def _ok(result) -> str:
    rc, out, err = result
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err
    return out


def test_the_same_settings_again_are_skipped(runs):
    assert "promoted: no champion yet" in _ok(runs["first"])
    out = _ok(runs["same"])
    assert "SKIPPED" in out and "nothing to retrain" in out


def test_another_k_re_evaluates_and_re_gates_and_keeps_the_first_estimate(runs):
    out = _ok(runs["other_k"])
    assert "SKIPPED" not in out
    assert "completed                  re-gated v1 under new evaluation settings" in out
    assert "K=16" in out and "test log p(x) (IS, K=16)" in out
    assert set(runs["history"]) == {8, 16}  # both estimates stay in the run's history
    v1 = next(v for v in runs["versions"] if v.version == 1)
    assert "aevb.score.is.test.k8.seed0." + v1.tags["aevb.dataset_version"] in v1.tags
    assert "aevb.score.is.test.k16.seed0." + v1.tags["aevb.dataset_version"] in v1.tags
    assert "K=16" in v1.tags["aevb.gate.evaluation"]


def test_more_export_splits_re_export_the_champions_table(runs):
    out = _ok(runs["more_splits"])
    assert "SKIPPED" not in out
    assert "completed                  exported the champion's latent table" in out
    import pyarrow.parquet as pq

    table = pq.read_table(f"{runs['root']}/latents/digits/shared/v1").to_pandas()
    assert set(table["split"]) == {"test", "valid"}


def test_another_dataset_under_the_same_name_is_a_challenger_without_a_traceback(runs):
    out = _ok(runs["other_data"])
    assert "kept champion: not comparable: champion v1 was trained on dataset 'digits'" in out
    assert "registered model           shared version 2 @challenger" in out
    assert "not exported: the champion v1 was trained on dataset 'digits', not 'sensors'" in out
    assert runs["champion"].version == 1
    v2 = next(v for v in runs["versions"] if v.version == 2)
    assert v2.tags["aevb.gate.comparable"] == "false"
    assert "different data" in v2.tags["aevb.gate.reason"]
    assert v2.tags["aevb.feature_shape"] == "[3]"
