"""Model selection never trusts an empty or tiny validation split (issue: an empty split scored
0.0, so epoch 1 stayed "best", early stopping fired and epoch 1's weights were saved).

- empty valid split: `aevb train` and the Python API `tasks.train.train` refuse in one line
  before anything is written; `models.training` itself refuses to score an empty dataset;
- a valid split smaller than a batch is scored on every row (the partial batch counts), and the
  saved weights are those of the best-scoring epoch, not epoch 1's.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from flows import cli
from models import constants as C
from models.config import ModelConfig, TrainConfig
from models.errors import DatasetError, ModelError

SMALL = ModelConfig(latent_dim=2, hidden_sizes=(16,))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """digits with no valid split (`d0`) and with a 5-row valid split (`d5`, < one batch)."""
    from tasks.ingest import ingest
    from tasks.store.datasets import load_manifest

    base = tmp_path_factory.mktemp("selection")
    root = str(base / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEVB_MLFLOW_DIR", str(base / "mlflow"))
        mp.setenv("AEVB_DATA_ROOT", root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ingest("digits", "d0", root, valid_fraction=0)
        ingest("digits", "d5", root, valid_fraction=0.003)
        yield {"root": root, "base": base, "d5_rows": load_manifest(root, "d5").rows}


def _tree(path) -> set[str]:
    return {str(p) for p in path.rglob("*")} if path.exists() else set()


def test_the_api_refuses_an_empty_valid_split_before_writing(world, tmp_path):
    from tasks import tracking
    from tasks.train import train

    before = _tree(world["base"])
    with pytest.raises(DatasetError, match=r"'d0' .* has an empty valid split.*--valid-fraction"):
        train("d0", SMALL, TrainConfig(epochs=15), data_root=world["root"],
              checkpoint_root=str(tmp_path / "ckpt"))  # fmt: skip
    assert not (tmp_path / "ckpt").exists()
    assert _tree(world["base"]) == before  # no checkpoint, no MLflow run or experiment
    assert tracking.client().search_experiments(filter_string="name = 'aevb-d0'") == []


def test_the_cli_refuses_the_issue_case_in_one_line(world, capsys):
    """`aevb ingest digits --name d0 --valid-fraction 0; aevb train --dataset d0 train.epochs=15`
    (the ingest is the fixture's, by the same task)."""
    rc = cli.main(["train", "--dataset", "d0", "--data-root", world["root"], "train.epochs=15"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("aevb train: error: dataset 'd0' ")
    assert "empty valid split" in err[0] and "Traceback" not in err[0]


def test_training_refuses_to_select_on_an_empty_dataset():
    """models.training: the mean of no rows is not a score (it read 0.0 and beat every epoch)."""
    from models.training import fit
    from models.vae import VAE

    cfg = TrainConfig(epochs=3, batch_size=4)
    model = VAE(ModelConfig(latent_dim=2, hidden_sizes=(4,), feature_shape=(3,)), seed=0)
    x = np.random.default_rng(0).integers(0, 2, (8, 3)).astype(np.float32)
    empty = tf.data.Dataset.from_tensor_slices(x[:0]).batch(4)
    with pytest.raises(ModelError, match="valid data yielded no rows"):
        fit(model, lambda epoch: tf.data.Dataset.from_tensor_slices(x).batch(4), empty, 8, cfg)


def test_the_scorer_counts_a_partial_batch():
    """5 rows in batches of 2 (2, 2, 1) or of 1000 (one partial batch): all 5 are averaged."""
    from models.training import Evaluator
    from models.vae import VAE

    model = VAE(ModelConfig(latent_dim=2, hidden_sizes=(4,), feature_shape=(3,)), seed=0)
    x = np.random.default_rng(1).integers(0, 2, (5, 3)).astype(np.float32)
    for batch in (2, 1000):
        evaluator = Evaluator(model, TrainConfig(seed=0))
        evaluator(tf.data.Dataset.from_tensor_slices(x).batch(batch))
        assert evaluator.sums.means()[1] == 5.0


def test_a_tiny_valid_split_selects_the_best_epoch_not_epoch_1(world, tmp_path):
    """5 valid rows, batch 100: the saved weights score exactly the best epoch's valid ELBO."""
    from models.saved import load_vae
    from models.training import Evaluator
    from tasks import tracking
    from tasks.store.streaming import make_tf_dataset
    from tasks.train import train

    assert world["d5_rows"][C.VALID] == 5
    cfg = TrainConfig(epochs=6, batch_size=100, patience=0, seed=3)
    out = train("d5", SMALL, cfg, data_root=world["root"], checkpoint_root=str(tmp_path / "ckpt"))
    history = tracking.client().get_metric_history(out.run_id, C.VALID_ELBO)
    valid = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(valid) == 6 and all(math.isfinite(v) for v in valid)
    assert max(valid[1:]) > valid[0]  # later epochs are better on this split
    assert out.best_epoch == 1 + int(np.argmax(valid)) and out.best_epoch > 1
    assert out.best_valid_elbo == pytest.approx(max(valid), abs=1e-9)
    saved = load_vae(out.saved_model_dir)
    data = make_tf_dataset(world["root"], "d5", None, C.VALID, 1000)
    rescored = Evaluator(saved, cfg)(data)[C.VALID_ELBO]
    assert rescored == pytest.approx(max(valid), abs=1e-4)
    assert rescored != pytest.approx(valid[0], abs=1e-3)
    assert os.path.isdir(out.saved_model_dir)
