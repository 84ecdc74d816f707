"""Lineage both ways, and the pictures named where people look: the MLflow run records the
dataset's full URI and the Prefect flow run (id, name, link); the pipeline summary and its Prefect
artifact link to the MLflow run and model version and name the plots the run holds."""

from __future__ import annotations

import json

import pytest

from tests.helpers import env

FAST = [
    "train.epochs=1",
    "train.jit_compile=false",
    "model.hidden_sizes=[16]",
    "model.latent_dim=2",
    "evaluate.num_samples=8",
    "export.splits=['test']",
]


@pytest.fixture(scope="module")
def piped(prefect_harness, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    from flows.config import load_config
    from flows.pipeline import pipeline_flow
    from tasks import tracking
    from tests.flows.test_pipeline_flow import _artifact

    tmp = tmp_path_factory.mktemp("lineage")
    root = str(tmp / "data")
    # PREFECT_API_URL as a user sets it for a real server (here: the session's test server), so
    # the flow run's UI link is recorded.
    api = PREFECT_API_URL.value()
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp / "mlflow"), PREFECT_API_URL=api):
        config = load_config(overrides=[*FAST, f"data.data_root={root!r}", "data.name='lin'"])
        state = pipeline_flow(config, return_state=True)
        summary = state.result()
        run = tracking.client().get_run(summary.run_id)
        yield {
            "summary": summary,
            "run": run,
            "flow_run_id": str(state.state_details.flow_run_id),
            "artifact": _artifact(summary.artifact_key),
            "plots": tracking.list_artifacts(summary.run_id, "plots"),
            "uri": tracking.tracking_uri(),
            "api": api,
        }


def test_the_mlflow_run_records_the_dataset_uri_and_the_prefect_flow_run(piped):
    s, tags = piped["summary"], piped["run"].data.tags
    assert tags["aevb.dataset_uri"] == s.dataset_path and s.dataset_path.startswith(s.data_root)
    assert tags["aevb.data_root"] == s.data_root
    assert tags["aevb.dataset_source"] == "sklearn.datasets.load_digits"
    assert tags["aevb.prefect.flow_run_id"] == piped["flow_run_id"] == s.flow_run_id
    assert tags["aevb.prefect.flow_name"] == "aevb-pipeline"
    assert tags["aevb.prefect.flow_run_name"] == s.flow_run_name
    base = piped["api"].removesuffix("/api")
    assert tags["aevb.prefect.flow_run_url"] == f"{base}/runs/flow-run/{piped['flow_run_id']}"
    assert piped["flow_run_id"] in tags["mlflow.note.content"]  # shown as the run's description
    [ds] = piped["run"].inputs.dataset_inputs
    assert json.loads(ds.dataset.source)["uri"] == s.dataset_path


def test_the_prefect_artifact_links_to_the_mlflow_run_model_version_and_plots(piped):
    s, md = piped["summary"], piped["artifact"]
    assert f"/runs/{s.run_id})" in md
    assert f"/#/models/{s.model_name}/versions/{s.model_version})" in md
    for plot in piped["plots"]:
        assert f"[`{plot}`](" in md
    assert piped["flow_run_id"] in md


def test_the_summary_names_the_plots_the_run_holds(piped):
    from flows.summary import format_summary

    s = piped["summary"]
    assert list(s.plots) == piped["plots"] and "plots/learning_curves.png" in s.plots
    assert "plots/manifold.png" in s.plots  # 2-D latents: the paper's Fig. 4
    text = format_summary(s, piped["uri"])
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("plots"))
    assert f"runs:/{s.run_id}/plots/" in line
    for plot in s.plots:
        assert plot.split("/")[-1] in line
    assert f"Prefect flow run           {s.flow_run_name} ({s.flow_run_id})" in text
