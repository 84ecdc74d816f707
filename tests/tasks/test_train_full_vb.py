"""`train.theta = "full_vb"` (App. F) through the train stage: the wrapper trains the given VAE exactly
as `fit_full_vb` does, the config rejects combinations it cannot train, the run key of MAP runs is
unchanged by the new field, and a full-VB run saves a loadable plug-in model with its theta KL logged."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig, TrainConfig, to_dict
from models.errors import ConfigError
from models.full_vb import FullVBVAE, fit_full_vb, fit_vae_full_vb
from models.vae import VAE
from tests.tasks._mlflow_helpers import write_dataset

CFG = ModelConfig(feature_shape=(8,), latent_dim=2, hidden_sizes=(16,), activation="tanh")


def _data(epoch: int) -> tf.data.Dataset:
    x = tf.cast(tf.random.stateless_uniform([200, 8], seed=[4, 4]) > 0.6, tf.float32)
    perm = np.random.default_rng(epoch).permutation(200)
    return tf.data.Dataset.from_tensor_slices(tf.gather(x, perm)).batch(50)


def test_wrapper_trains_the_given_vae_like_fit_full_vb():
    cfg = TrainConfig(epochs=2, learning_rate=0.01, patience=0, jit_compile=False, theta="full_vb")
    reference = FullVBVAE(CFG, seed=7, initial_std=0.01)
    fit_full_vb(reference, _data, None, 200, cfg)
    vae = VAE(CFG, seed=7)
    before = [v.numpy().copy() for v in vae.trainable_variables]
    result = fit_vae_full_vb(vae, _data, None, 200, cfg)
    assert result.epochs_completed == 2 and all("train_kl_theta" in h for h in result.history)
    for a, b, b0 in zip(
        reference.vae.trainable_variables, vae.trainable_variables, before, strict=True
    ):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(b.numpy(), b0)  # the given VAE itself was trained in place


def test_full_vb_config_checks():
    with pytest.raises(ConfigError, match="train.theta='bayes'"):
        TrainConfig(theta="bayes")
    with pytest.raises(ConfigError, match="estimator B"):
        TrainConfig(theta="full_vb", estimator="iwae")
    with pytest.raises(ConfigError, match="estimator B"):
        fit_vae_full_vb(VAE(CFG), _data, None, 200, TrainConfig(estimator="A"))


def test_map_run_keys_ignore_the_default_theta():
    from tasks.train import run_key

    map_key = run_key(CFG, TrainConfig(), "d", "v1")
    vb_key = run_key(CFG, TrainConfig(theta="full_vb"), "d", "v1")
    assert map_key != vb_key
    assert "theta" in to_dict(TrainConfig())  # the field is logged as a param all the same


def test_train_stage_with_full_vb_saves_the_plug_in_model(mlflow_store, data_root):
    from models.saved import load_vae
    from tasks import tracking
    from tasks.train import train

    write_dataset(data_root, "vb")
    model = ModelConfig(latent_dim=2, hidden_sizes=(16,), activation="tanh")
    cfg = TrainConfig(
        epochs=2, batch_size=40, learning_rate=0.01, jit_compile=False, theta="full_vb"
    )
    out = train("vb", model, cfg, data_root)
    assert out.epochs_completed == 2 and np.isfinite(out.best_valid_elbo)
    vae = load_vae(out.saved_model_dir)
    assert vae.config.latent_dim == 2 and os.path.isdir(out.saved_model_dir)
    run = tracking.client().get_run(out.run_id)
    assert run.data.params["train.theta"] == "full_vb"
    history = tracking.client().get_metric_history(out.run_id, "train_kl_theta")
    assert [m.step for m in history] == [1, 2] and all(m.value > 0 for m in history)


def test_pipeline_config_selects_full_vb():
    from flows.config import load_config

    assert load_config(None, []).train.theta == "map"
    assert load_config(None, ["train.theta=full_vb"]).train.theta == "full_vb"
    with pytest.raises(ConfigError, match="'map', 'full_vb'"):
        load_config(None, ["train.theta=bayes"])
