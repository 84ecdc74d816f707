"""`aevb reproduce`: argument checks fail with one line (exit 2) before any flow starts, overrides are
typed, and a tiny run through the verb writes the report with the sections of the chosen experiments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import flows.cli
from flows.config_reproduce import parse_reproduce_overrides as parse_overrides
from models.errors import ConfigError
from tasks.reproduce.checks import figure_flags
from tasks.reproduce.figures import MIN_CELL_PX

TINY = [
    "fig2_latents=2",
    "fig2_hidden=20",
    "fig2_budgets=500,1000",
    "gradvar_draws=5",
    "gradvar_train_samples=500",
    "jit_compile=false",  # at these sizes XLA compile time would dominate
]


@pytest.fixture
def aevb():
    return flows.cli.main


@pytest.fixture
def no_flow(monkeypatch):
    """Fail the test if the flow is started: validation must happen before it."""
    import flows.reproduce

    def _boom(**kwargs):
        raise AssertionError(f"the flow started with {kwargs}")

    monkeypatch.setattr(flows.reproduce, "reproduce_flow", _boom)


def test_help_lists_the_options(aevb, capsys):
    with pytest.raises(SystemExit) as exc:
        aevb(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for option in (
        "--quick",
        "--full",
        "--out",
        "--dataset",
        "--experiments",
        "--seed",
        "--no-mlflow",
    ):
        assert option in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--experiments", "fig2,fig9"], "unknown ['fig9']"),
        (["--experiments", ","], "empty list"),
        (["--mode", "slow"], "--mode='slow'"),
        (["--dataset", "cifar"], "--dataset='cifar'"),
        (["--seed", "x"], "--seed='x' must be an integer"),
        (["--seed", "-1"], "--seed=-1"),
        (["fig2_budget=10"], "unknown setting 'fig2_budget=10'"),
        (["seed=3"], "unknown setting 'seed=3'"),
        (["fig2_budgets=10,ten"], "fig2_budgets='ten'"),
        (["fig3_hmc=2,10"], "expected 3 values"),
        (["vb_epochs=0"], "vb_epochs=0 must be > 0"),
        (["jit_compile=maybe"], "expected true or false"),
        (["--dataset", "digits", "fig3_train_sizes=500,2000"], "digits has 1400 training rows"),
    ],
)
def test_bad_arguments_are_one_line_exit_2_before_the_flow(aevb, no_flow, capsys, argv, expected):
    rc = aevb(["reproduce", "--no-mlflow", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("aevb reproduce: error: ") and expected in err[0], (
        err
    )


def test_quick_and_full_together_are_rejected(aevb, no_flow):
    with pytest.raises(SystemExit) as exc:
        aevb(["reproduce", "--quick", "--full"])
    assert exc.value.code == 2


def test_missing_fashion_mnist_names_the_fix(aevb, no_flow, capsys, monkeypatch, tmp_path):
    from tasks.sources import builtin

    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    assert aevb(["reproduce", "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent" in err[0] and "dataset-fashion-mnist" in err[0]


def test_out_must_be_a_folder(aevb, no_flow, capsys, tmp_path):
    (tmp_path / "f").write_text("")
    assert aevb(["reproduce", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_overrides_are_typed_by_the_settings_fields():
    got = parse_overrides(["fig2_latents=3, 20", "fig3_hmc=2,10,20", "jit_compile=false"])
    assert got == {"fig2_latents": (3, 20), "fig3_hmc": (2, 10, 20), "jit_compile": False}
    assert parse_overrides(["vb_epochs=5", "lr_candidates=0.01,0.1"]) == {
        "vb_epochs": 5,
        "lr_candidates": (0.01, 0.1),
    }
    with pytest.raises(ConfigError, match="fig2_hidden"):
        parse_overrides(["fig2_hidden=2.5"])


def test_tiny_run_writes_the_report(aevb, prefect_harness, capsys, tmp_path):
    out = tmp_path / "report"
    argv = ["reproduce", "--quick", "--out", str(out), "--dataset", "digits", "--seed", "3"]
    rc = aevb([*argv, "--experiments", "fig2,gradient_variance", "--no-mlflow", *TINY])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert f"report: {out / 'report.md'}" in stdout
    report = (out / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert headings == [
        "# Reproducing Kingma & Welling (2013): quick mode",
        "## Claims",
        "## Setup and caveats",
        "## Fig. 2 analogue: lower bound vs training samples evaluated",
        "## Estimator variance: SGVB estimator A vs B",
        "## Figure checks",
    ]
    assert "`aevb reproduce --quick` (seed 3)" in report
    assert "Estimator B has lower gradient variance than A" in report
    assert "AEVB's test bound is above wake-sleep's" in report
    payload = json.loads((out / "results.json").read_text())
    assert payload["settings"]["fig2_budgets"] == [500, 1000]
    assert payload["settings"]["seed"] == 3 and payload["settings"]["dataset"] == "digits"
    assert set(payload["seconds"]) == {"fig2", "gradient_variance"}
    for name in ("fig2_bound_vs_samples.png", "gradient_variance.png", "fig5_samples.png"):
        assert (Path(out) / name).stat().st_size > 1000
    # Two budgets per curve are too few for a learning curve: flagged beside Fig. 2, and the
    # report's flags are exactly those its stored statistics imply.
    lines = report.splitlines()
    note = lines[lines.index("![Fig. 2](fig2_bound_vs_samples.png)") + 2]
    assert note.startswith("> **Flagged:** Fig. 2 has 2 evaluated budget(s) per curve"), note
    assert payload["flags"] == figure_flags(payload["results"])
    for figure, flags in payload["flags"].items():
        assert all(flag in report for flag in flags), figure
    with Image.open(out / "fig5_samples.png") as img:  # one panel of 10 cells per row
        assert img.size[0] >= 10 * MIN_CELL_PX
    assert payload["results"]["fig2"]["samples_cell_px"] >= MIN_CELL_PX
