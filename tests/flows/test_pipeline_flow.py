"""The pipeline flow's orchestration semantics on tiny data (flows/pipeline.py, flows/stages.py).

One module-scoped sequence of runs on the same stores, like an operator's week:
1. first run: new dataset version -> train -> evaluate -> v1 champion -> export, artifact + logs;
2. same data and config (via the CLI): ingest is a Prefect cache hit, nothing is retrained;
3. same data, `pipeline.retrain_on_unchanged=true`, and the tracking store fails once with a
   connection error during evaluation: the stage is retried, v2 is registered and gated;
4. new data (another split): a new dataset version is trained and gated against the champion.
"""

from __future__ import annotations

import contextlib
import io
import os

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
]


def _flow_run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs reach the API in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [entry.message for entry in logs]


def _artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return max(found, key=lambda a: a.created).data


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    from flows.cli import main
    from flows.config import load_config
    from flows.pipeline import pipeline_flow
    from tasks import tracking

    tmp = tmp_path_factory.mktemp("pipeline-flow")
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which tracking_uri() then prefers:
    # save and restore both so later modules get their own stores.
    root = str(tmp / "data")
    base = [*FAST, f"data.data_root={root!r}"]
    out: dict = {"root": root}
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp / "mlflow")):
        state = pipeline_flow(load_config(overrides=base), return_state=True)
        out["first"] = state.result()
        out["first_logs"] = _flow_run_logs(state.state_details.flow_run_id)
        out["first_artifact"] = _artifact(out["first"].artifact_key)

        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            out["second_rc"] = main(["pipeline", "--data-root", root, *FAST])
        out["second_stdout"], out["second_stderr"] = buf.getvalue(), err.getvalue()
        out["versions_after_second"] = tracking.list_versions("aevb-digits")

        calls = {"eval_tags": 0}
        real_set_tags = tracking.set_tags

        def flaky_set_tags(run_id, tags):
            if "aevb.eval_num_samples" in tags:
                calls["eval_tags"] += 1
                if calls["eval_tags"] == 1:
                    raise ConnectionError("Connection refused (tracking server restarting)")
            return real_set_tags(run_id, tags)

        tracking.set_tags = flaky_set_tags
        try:
            out["third"] = pipeline_flow(
                load_config(overrides=[*base, "pipeline.retrain_on_unchanged=true"])
            )
        finally:
            tracking.set_tags = real_set_tags
        out["eval_tag_calls"] = calls["eval_tags"]
        out["fourth"] = pipeline_flow(load_config(overrides=[*base, "data.split_seed=1"]))
        out["versions"] = tracking.list_versions("aevb-digits")
        out["champion"] = tracking.get_alias("aevb-digits", "champion")
        yield out


def test_first_run_trains_registers_and_exports(runs):
    s = runs["first"]
    assert s.dataset_created and not s.ingest_cache_hit and not s.skipped
    assert s.model_name == "aevb-digits" and s.model_version == 1 and s.promoted
    assert s.test_log_marginal_likelihood >= s.test_elbo  # IS with K=8 vs the ELBO
    assert os.path.isdir(s.latent_table) and s.latent_rows > 0
    assert s.lock_released_at >= s.lock_acquired_at


def test_progress_is_in_the_flow_run_logs(runs):
    logs = "\n".join(runs["first_logs"])
    for step in ("[1/5] ingest", "[2/5] train", "[3/5] evaluate", "[4/5] register", "[5/5] export"):
        assert step in logs, f"missing {step!r} in logs"


def test_artifact_has_mlflow_links_and_a_metrics_table(runs):
    s, md = runs["first"], runs["first_artifact"]
    assert f"/runs/{s.run_id})" in md
    assert "/#/models/aevb-digits/versions/1)" in md
    assert "| metric | value |" in md
    assert f"{s.test_log_marginal_likelihood:.4f}" in md and "promoted to champion" in md


def test_unchanged_data_is_a_cache_hit_and_nothing_is_retrained(runs):
    assert runs["second_rc"] == 0, runs["second_stderr"][-2000:]
    out = runs["second_stdout"]
    assert "SKIPPED" in out and "unchanged" in out and "nothing to retrain" in out
    assert [v.version for v in runs["versions_after_second"]] == [1]  # no new model version
    # The CLI prints where everything went.
    for needle in ("where everything went", "MLflow store", "latent table", "Prefect artifact"):
        assert needle in out


def test_retrain_on_unchanged_retries_a_transient_error_and_gates(runs):
    first, s = runs["first"], runs["third"]
    assert runs["eval_tag_calls"] == 2  # failed once with a connection error, then retried
    assert s.ingest_cache_hit and not s.skipped
    assert s.run_id != first.run_id and s.model_version == 2
    v2 = next(v for v in runs["versions"] if v.version == 2)
    candidate = float(v2.tags["aevb.gate.candidate_log_marginal_likelihood"])
    champion = float(v2.tags["aevb.gate.champion_log_marginal_likelihood"])
    assert s.promoted == (candidate > champion)  # the champion moves only if strictly better


def test_new_dataset_version_is_trained_and_gated(runs):
    first, s = runs["first"], runs["fourth"]
    assert s.dataset_created and s.dataset_version != first.dataset_version
    assert not s.skipped and s.model_version == 3
    v3 = next(v for v in runs["versions"] if v.version == 3)
    assert v3.tags["aevb.dataset_version"] == s.dataset_version
    candidate = float(v3.tags["aevb.gate.candidate_log_marginal_likelihood"])
    champion = float(v3.tags["aevb.gate.champion_log_marginal_likelihood"])
    assert s.promoted == (candidate > champion)
    assert (runs["champion"].version == 3) == s.promoted


def test_bad_config_exits_2_with_one_line(capsys):
    from flows.cli import main

    rc = main(["pipeline", "train.epochs=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("aevb pipeline: error: train.epochs=0")


def test_version_flag(capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("aevb-pipeline ")


# -- retry policy ----------------------------------------------------------------------------------
def test_transient_errors_are_recognised_and_pipeline_errors_never():
    from models.errors import ConfigError, TrackingError
    from tasks.runners import is_transient_io_error

    class MlflowException(Exception):
        pass

    wrapped = MlflowException("API request failed: Max retries exceeded (Connection refused)")
    assert is_transient_io_error(ConnectionRefusedError("refused"))
    assert is_transient_io_error(TimeoutError())
    assert is_transient_io_error(wrapped)
    assert is_transient_io_error(OSError("AWS Error NETWORK_CONNECTION during GetObject"))
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as exc:
            raise RuntimeError("upload failed") from exc
    except RuntimeError as outer:
        assert is_transient_io_error(outer)  # found through __cause__
    assert not is_transient_io_error(ConfigError("train.epochs=0 must be > 0"))
    assert not is_transient_io_error(TrackingError("Connection refused"))  # a PipelineError
    assert not is_transient_io_error(FileNotFoundError("/x/manifest.json"))
    assert not is_transient_io_error(MlflowException("RESOURCE_DOES_NOT_EXIST: model"))
    assert not is_transient_io_error(ValueError("bad shape"))


def test_stage_retries_transient_errors_only(prefect_harness):
    from prefect import flow, task

    from models.errors import DatasetError
    from tasks.runners import with_io_retries

    calls = {"io": 0, "user": 0}

    @task
    def flaky_io() -> str:
        calls["io"] += 1
        if calls["io"] < 3:
            raise ConnectionError("Connection reset by peer")
        return "ok"

    @task
    def bad_input() -> None:
        calls["user"] += 1
        raise DatasetError("x: missing column 'id'")

    @flow
    def f() -> tuple[str, str]:
        ok = with_io_retries(flaky_io, retries=3, delay_seconds=0)()
        state = with_io_retries(bad_input, retries=3, delay_seconds=0)(return_state=True)
        return ok, state.name

    assert f() == ("ok", "Failed")
    assert calls == {"io": 3, "user": 1}
