"""`train.strategy` through the train stage in one process: "mirrored" trains with the
distributed trainer (one CPU replica here), tracks and saves like the default trainer, and is a
different training (run key, checkpoint folder) from the default one. Two workers: the slow
loopback test tests/flows/test_distributed_cli.py."""

from __future__ import annotations

import os

import numpy as np

from models.config import ModelConfig, TrainConfig
from tests.tasks._mlflow_helpers import write_dataset


def test_mirrored_strategy_trains_tracks_and_saves(mlflow_store, data_root):
    from models.saved import load_vae
    from tasks import tracking
    from tasks.train import train

    write_dataset(data_root, "strat")
    model = ModelConfig(latent_dim=2, hidden_sizes=(16,), activation="tanh")
    cfg = TrainConfig(epochs=2, batch_size=40, learning_rate=0.01, jit_compile=False)
    mirrored = TrainConfig(**{**cfg.__dict__, "strategy": "mirrored"})
    out = train("strat", model, mirrored, data_root)
    assert out.epochs_completed == 2 and np.isfinite(out.best_valid_elbo)
    assert out.cluster_role == "" and out.run_id
    assert load_vae(out.saved_model_dir).config.latent_dim == 2
    run = tracking.client().get_run(out.run_id)
    assert run.data.params["train.strategy"] == "mirrored"
    assert [m.step for m in tracking.client().get_metric_history(out.run_id, "train_elbo")] == [
        1,
        2,
    ]
    default = train("strat", model, cfg, data_root)
    assert default.run_id != out.run_id and not default.reused
    assert os.path.dirname(default.saved_model_dir) != os.path.dirname(out.saved_model_dir)
    again = train("strat", model, mirrored, data_root)  # identical finished run: reused
    assert again.reused and again.run_id == out.run_id
