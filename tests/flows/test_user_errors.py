"""The failure classes a careless or hostile user hit (issue 13), each through the real entry
point: one line `aevb <verb>: error: ...`, exit 2, no traceback, nothing written.

The wider table of malformed inputs is tests/flows/test_bad_input.py; traversal through names and
versions is tests/flows/test_traversal.py; special files are tests/tasks/test_special_files.py.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows import cli
from flows.config import load_config
from models.errors import ConfigError, DatasetError
from tasks.sources.idx import write_idx

REPO = Path(__file__).resolve().parents[2]


def _aevb(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(AEVB_DATA_ROOT=str(tmp_path / "data"), AEVB_MLFLOW_DIR=str(tmp_path / "mlflow"),
               PYTHONPATH=str(REPO))  # fmt: skip
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_a_csv_of_binary_garbage_is_one_line_from_the_real_cli(tmp_path):
    (tmp_path / "garbage.csv").write_bytes(np.random.default_rng(0).bytes(5000))
    proc = _aevb(["ingest", str(tmp_path / "garbage.csv")], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"aevb ingest: error: {tmp_path / 'garbage.csv'}: not UTF-8 text (binary data or another "
        f"encoding at byte {proc.stderr.split('at byte ')[1].split(')')[0]}); CSV sources must be "
        "UTF-8 text: check the path, or convert it (iconv -t UTF-8)"
    ]
    assert not (tmp_path / "data").exists()


def test_an_idx_count_mismatch_is_one_line_from_the_real_cli(tmp_path):
    write_idx(str(tmp_path / "a-images-idx3-ubyte"), np.zeros((5, 3, 3), np.uint8))
    write_idx(str(tmp_path / "a-labels-idx1-ubyte"), np.zeros(4, np.uint8))
    proc = _aevb(["ingest", str(tmp_path / "a-images-idx3-ubyte")], tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "4 labels (shape [4]) for 5 images" in proc.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_an_error_found_inside_a_flow_is_said_once_without_tracebacks(tmp_path):
    """gzipped IDX files are only checked when read, inside the flow: Prefect's own failure
    records (a traceback and three repeats of the message) stay off the console."""
    with gzip.open(tmp_path / "a-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (3).to_bytes(4, "big") * 2
                 + bytes(45))  # fmt: skip
    with gzip.open(tmp_path / "a-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes(4))
    proc = _aevb(["ingest", str(tmp_path / "a-images-idx3-ubyte.gz")], tmp_path)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("aevb ingest: error:")]
    assert len(errors) == 1 and "4 labels (shape [4]) for 5 images" in errors[0]
    assert "Traceback" not in proc.stderr and "DatasetError" not in proc.stderr, proc.stderr
    assert not (tmp_path / "data" / "datasets").exists()


def test_reader_options_of_the_wrong_type_are_refused_when_the_config_loads(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[data]\nsource = "digits"\noptions = {scale = "abc"}\n')
    with pytest.raises(ConfigError, match=r"data.options.scale='abc' must be a finite number > 0"):
        load_config(str(cfg))
    for bad in ({"feature_columns": "a,b"}, {"labels_from_folders": "yes"}, {"id_column": 3}):
        with pytest.raises(ConfigError, match=r"data.options\.\w+=.* must be"):
            load_config(None, [f"data.options={_toml(bad)}"])
    from tasks.ingest import ingest

    with pytest.raises(ConfigError, match=r"scale='abc' must be a finite number"):
        ingest("digits", "d", str(tmp_path / "root"), scale="abc")


def _toml(d: dict) -> str:
    import json

    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + "}"


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_bytes("[train]\nepochs = 3  # réglé\n".encode("latin-1"))
    assert cli.main(["pipeline", "--config", str(cfg)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"aevb pipeline: error: --config {cfg}: not UTF-8 text (byte 23); TOML files are UTF-8: save it as UTF-8"  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "value"),
    [("train.learning_rate", "nan"), ("train.learning_rate", "inf"), ("train.weight_decay", "nan"),
     ("pipeline.lock_timeout_seconds", "nan"), ("pipeline.retry_delay_seconds", "inf"),
     ("data.test_fraction", "nan")],
)  # fmt: skip
def test_a_bad_float_setting_is_named_before_a_missing_dataset(tmp_path, capsys, setting, value):
    """Settings first: the message names the setting, not the dataset that is also missing."""
    argv = ["train", "--dataset", "nosuch", "--data-root", str(tmp_path), f"{setting}={value}"]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{setting}={value}" in line and "nosuch" not in line
    assert list(tmp_path.iterdir()) == []


def test_an_empty_valid_split_is_refused_before_training_writes_anything(tmp_path, mlflow_store):
    from models.config import ModelConfig, TrainConfig
    from tasks import tracking
    from tasks.ingest import ingest
    from tasks.train import train

    root = str(tmp_path / "data")
    ingest("digits", "novalid", root, valid_fraction=0)
    with pytest.raises(DatasetError, match=r"has an empty valid split; training needs at least 1"):
        train("novalid", ModelConfig(hidden_sizes=(8,)), TrainConfig(epochs=1), root)
    with pytest.raises(DatasetError, match=r"fewer than one batch \(train.batch_size=5000\)"):
        train("novalid", ModelConfig(hidden_sizes=(8,)), TrainConfig(batch_size=5000), root)
    assert not (tmp_path / "data" / "checkpoints").exists()
    assert tracking.client().search_experiments(filter_string="name = 'aevb-novalid'") == []


def test_a_dataset_too_small_for_its_splits_is_refused_at_ingest_with_the_minimum(tmp_path):
    from tasks.ingest import ingest

    np.savez(tmp_path / "few.npz", x=np.ones((4, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"4 rows are too few .* the valid and test splits "
                       r"would be empty; it needs at least 6 rows"):  # fmt: skip
        ingest(str(tmp_path / "few.npz"), "few", str(tmp_path / "root"))
    assert not (tmp_path / "root").exists()
    ingest(str(tmp_path / "few.npz"), "few", str(tmp_path / "root"), valid_fraction=0.25,
           test_fraction=0)  # 4 rows: 3 train + 1 valid is enough  # fmt: skip


def test_a_one_row_dataset_through_the_pipeline_is_one_line_and_writes_nothing(
    prefect_harness, tmp_path, mlflow_store, capfd
):
    from tasks import tracking

    (tmp_path / "one.csv").write_text("a,b\n0,1\n")
    argv = ["pipeline", str(tmp_path / "one.csv"), "--data-root", str(tmp_path / "data")]
    assert cli.main(argv) == 2
    err = capfd.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("aevb pipeline: error:")]
    assert len(errors) == 1 and "1 rows are too few" in errors[0] and "at least 6 rows" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "datasets").exists()
    assert not (tmp_path / "data" / "checkpoints").exists()
    assert tracking.list_registered_models() == []
