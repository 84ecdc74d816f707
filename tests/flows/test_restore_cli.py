"""`aevb corrupt` / `aevb restore` through the real CLI entry point (flows.cli.main, in process)."""

from __future__ import annotations

import os

import pytest

from models import constants as C
from tests.tasks._restore_helpers import registered_digits_model, use_store


@pytest.fixture(scope="module")
def env(tmp_path_factory, prefect_harness):
    with use_store(registered_digits_model(tmp_path_factory)) as info:
        yield info


@pytest.fixture()
def aevb(monkeypatch, env):
    from flows import cli

    monkeypatch.setenv("AEVB_DATA_ROOT", env["root"])
    return cli.main


def test_parser_choices_match_the_tasks():
    from flows.commands import corrupt, restore
    from tasks.restore import METHODS
    from tasks.store.degradations import KINDS

    assert corrupt.KINDS == tuple(KINDS) and restore.METHODS == tuple(METHODS)


def _restored(env):
    folder = os.path.join(env["root"], "restored")
    return sorted(os.walk(folder)) if os.path.isdir(folder) else []


def test_corrupt_then_restore_prints_the_psnr_table(aevb, env, capsys):
    assert (
        aevb(["corrupt", "digits", "--kind", "inpaint", "--name", "cli-holes", "--seed", "5"]) == 0
    )
    out = capsys.readouterr().out
    assert "degraded dataset cli-holes version" in out and "mask dataset cli-holes.mask@" in out
    argv = ["restore", "--model", env["uri"], "--dataset", "cli-holes", "--method", "amortized",
            "--splits", "valid,test", "--no-mlflow"]  # fmt: skip
    assert aevb(argv) == 0
    out = capsys.readouterr().out
    assert "restored 360 rows of cli-holes (inpaint)" in out
    heads = [ln.split()[0] for ln in out.splitlines() if ln.strip().endswith("PSNR dB        MSE")]
    assert heads == ["test", "valid"]
    rows = {}  # per split: the model's, each baseline's and the margin's PSNR as printed
    for ln in out.splitlines():
        if ln.strip().endswith("PSNR dB        MSE"):
            split = rows.setdefault(ln.split()[0], {})
        elif ln.startswith("    "):
            name, psnr = ln[4:36].strip(), float(ln[36:46])
            split[name] = psnr
    for split in rows.values():
        names = ["mean imputation", "nearest neighbour", "harmonic", "biharmonic"]
        assert list(split) == ["amortized (the model)", *names, "margin over the best baseline"]
        best = max(split[n] for n in names)
        margin = split["margin over the best baseline"]
        assert margin == pytest.approx(split["amortized (the model)"] - best, abs=0.011)
    assert "<- best baseline" in out and "(negative: the baseline wins)" in out
    path = os.path.join(env["root"], "restored", "cli-holes", "aevb-digits", "v1",
                        "amortized-splits-valid-test")  # fmt: skip
    assert sorted(os.listdir(path)) == ["part-test-00000.parquet", "part-valid-00000.parquet"]
    assert os.path.isfile(f"{path}.manifest.json")


def test_restore_from_latents(aevb, env, capsys):
    import pyarrow.parquet as pq

    from tasks.export import export_latents

    table = export_latents(env["uri"], "digits", env["root"], splits=(C.TEST,))
    assert aevb(["restore", "--model", env["uri"], "--from-latents", table.path]) == 0
    out = capsys.readouterr().out
    assert f"decoded {table.rows} latent rows" in out
    path = os.path.join(env["root"], "restored", "digits", "aevb-digits", "v1", "from-latents")
    got = pq.read_table(os.path.join(path, "part-test-00000.parquet"))
    assert got.num_rows == table.rows and got.schema.field(C.COL_X).type.list_size == 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["corrupt", "digits", "--kind", "blur"], "--kind='blur' is not known"),
        (["corrupt", "nope", "--kind", "denoise"], "dataset 'nope' not found"),
        (["corrupt", "digits", "--kind", "superres", "--factor", "3"], "--factor=3"),
        (["restore", "--model", "{uri}"], "exactly one of --dataset"),
        (["restore", "--model", "{uri}", "--dataset", "digits", "--method", "gibbs"],
         "--method='gibbs' is not known"),
        (["restore", "--model", "{uri}", "--dataset", "digits"], "`--kind`: dataset 'digits'"),
        (["restore", "--model", "{uri}", "--dataset", "digits", "--kind", "denoise",
          "--splits", "tst"], "--splits 'tst'"),
        (["restore", "--model", "{uri}", "--dataset", "digits", "--kind", "denoise",
          "--iterations", "0"], "--iterations=0 must be >= 1"),
        (["restore", "--model", "models:/nope@champion", "--dataset", "digits", "--kind",
          "denoise"], "--model='models:/nope@champion': no such registered model"),
        (["restore", "--model", "{uri}", "--from-latents", "/no/such/table"],
         "latent table /no/such/table: not found"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_exit_2_and_write_nothing(aevb, env, capsys, argv, message):
    before_restored, before_sets = _restored(env), sorted(os.listdir(env["root"] + "/datasets"))
    code = aevb([a.format(uri=env["uri"]) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert lines[0].startswith(f"aevb {argv[0]}: error: ")
    assert _restored(env) == before_restored
    assert sorted(os.listdir(env["root"] + "/datasets")) == before_sets


def test_a_shape_mismatch_found_inside_the_flow_is_still_exit_2(aevb, env, capsys):
    from tasks.store.writer import DatasetWriter

    w = DatasetWriter(
        env["root"], "cli-4x4", feature_shape=(4, 4), storage_dtype="float32", scale=1.0,
        split_seed=0, source={"kind": "test"},
    )  # fmt: skip
    with w:
        w.write(C.TEST, ["a", "b"], [[0.5] * 16, [0.25] * 16], None)
        w.commit()
    before = _restored(env)
    argv = ["restore", "--model", env["uri"], "--dataset", "cli-4x4", "--kind", "denoise"]
    assert aevb(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("aevb restore: error: dataset 'cli-4x4': feature_shape [4, 4]")
    assert "use a model trained on the clean dataset" in last
    assert _restored(env) == before


def test_evaluate_hmc_on_a_model_with_too_many_latents_is_refused_before_any_work(
    aevb, env, capsys
):
    """The App. D estimator needs latent_dim <= 5; the 8-D model is refused by the verb's check()
    from the run's logged parameters: no download, no flow, nothing logged."""
    import argparse

    from flows.commands import evaluate
    from models.errors import ConfigError
    from models.hmc_estimator import MAX_LATENT_DIM
    from tasks import tracking

    assert evaluate.HMC_MAX_LATENT_DIM == MAX_LATENT_DIM  # spelled in the verb: no TF import
    before = tracking.client().get_run(env["run_id"]).data.metrics
    argv = ["evaluate", "--model", env["uri"], "--dataset", "digits", "--method", "hmc"]
    assert aevb(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("aevb evaluate: error: ")
    assert "latent_dim <= 5" in err[0] and "latent_dim 8" in err[0] and "--method is" in err[0]
    assert tracking.client().get_run(env["run_id"]).data.metrics == before
    args = argparse.Namespace(
        model=env["uri"], dataset="digits", version=None, split="test", num_samples=10,
        batch_size=10, seed=0, method="hmc", max_points=None, num_chains=None,
        num_steps=None, leapfrog_steps=None, burnin=None, data_root=env["root"],
    )  # fmt: skip
    with pytest.raises(ConfigError, match="latent_dim"):
        evaluate.check(args)
    args.method = "ais"  # AIS has no such limit: check() passes
    assert evaluate.check(args) == {}
