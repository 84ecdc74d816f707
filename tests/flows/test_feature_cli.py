"""Bad input to the conv, score and sample settings: exactly one line `aevb <verb>: error: ...`,
exit 2, before any flow starts and with nothing written."""

from __future__ import annotations

import os

import pytest

from flows.cli import main


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["-n", "0"],
            "aevb sample: error: --num-samples=0 must be an integer in [1, 100,000]",
        ),
        (["--seed", "-3"], "aevb sample: error: --seed=-3 must be an integer in [0, "),
        (["--manifold-size", "99"], "--manifold-size=99 must be an integer in [2, 50]"),
        (["sample.draws=3"], "aevb sample: error: sample.draws=3 must be true or false"),
    ],
)
def test_sample_settings(capsys, data_root, argv, message):
    """A bad flag is named as the flag; a bad KEY=VALUE override as its config key."""
    line = _one_line_error(
        capsys, ["sample", "--model", "models:/x/1", "--data-root", data_root, *argv]
    )
    assert line.startswith("aevb sample: error: ") and message in line
    assert os.listdir(data_root) == []


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--log-px-samples", "-1"], "--log-px-samples=-1 must be an integer >= 0"),
        (["--splits", "train,nope"], "--splits=['train', 'nope']; choose from train, valid"),
        (["--batch-size", "0"], "--batch-size=0 must be an integer >= 1"),
        (["score.seed=-1"], "score.seed=-1 must be an integer >= 0"),
    ],
)
def test_score_settings(capsys, data_root, argv, message):
    argv = ["score", "--model", "models:/x/1", "--dataset", "d", "--data-root", data_root, *argv]
    line = _one_line_error(capsys, argv)
    assert line.startswith("aevb score: error: ") and message in line
    assert os.listdir(data_root) == []


def test_export_log_px_samples_is_said_as_its_flag(capsys, data_root):
    argv = [
        "export",
        "--model",
        "models:/x/1",
        "--dataset",
        "d",
        "--data-root",
        data_root,
        "--log-px-samples",
        "-2",
    ]
    line = _one_line_error(capsys, argv)
    assert line == "aevb export: error: --log-px-samples=-2 must be an integer >= 0 (0: off)"


def test_pipeline_refuses_a_bad_export_log_px_samples(capsys, data_root):
    line = _one_line_error(
        capsys, ["pipeline", "--data-root", data_root, "export.log_px_samples=-5"]
    )
    assert "export.log_px_samples=-5 must be an integer >= 0" in line
    assert os.listdir(data_root) == []


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.architecture=cnn", "model.architecture='cnn' is not allowed; choose one of 'mlp'"),
        ("model.conv_channels=[]", "model.conv_channels=[] must be a non-empty list"),
        ("model.conv_kernel_size=0", "model.conv_kernel_size=0 must be > 0"),
    ],
)
def test_bad_conv_settings(capsys, data_root, override, message):
    line = _one_line_error(capsys, ["train", "--dataset", "d", "--data-root", data_root, override])
    assert line.startswith("aevb train: error: ") and message in line


def test_conv_on_a_dataset_of_vectors_is_refused_before_training(capsys, data_root):
    from tests.tasks._mlflow_helpers import write_dataset

    write_dataset(data_root, "vectors", feature_shape=(16,))
    line = _one_line_error(
        capsys,
        ["train", "--dataset", "vectors", "--data-root", data_root, "model.architecture=conv"],
    )
    assert line == (
        "aevb train: error: model.architecture='conv' needs images, but dataset vectors has "
        "feature_shape [16] (1-D); use model.architecture='mlp', or ingest the data with their "
        "(H, W) or (H, W, C) shape"
    )
    assert not os.path.exists(os.path.join(data_root, "checkpoints"))


def test_conv_with_full_vb_is_refused(capsys, data_root):
    from tests.tasks._mlflow_helpers import write_dataset

    write_dataset(data_root, "pics", feature_shape=(4, 4))
    line = _one_line_error(
        capsys,
        [
            "train",
            "--dataset",
            "pics",
            "--data-root",
            data_root,
            "model.architecture=conv",
            "train.theta=full_vb",
        ],
    )
    assert "train.theta='full_vb' supports model.architecture='mlp' only" in line


def test_a_bad_export_elbo_setting_is_refused_in_one_line(capsys, data_root):
    line = _one_line_error(capsys, ["pipeline", "--data-root", data_root, "export.elbo=3"])
    assert line == "aevb pipeline: error: export.elbo=3 must be true or false"
    assert os.listdir(data_root) == []
