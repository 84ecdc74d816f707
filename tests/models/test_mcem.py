"""Monte Carlo EM: the HMC chains sample the exact posterior (checked by quadrature over a 1-D latent),
the step size adapts to the target acceptance, only theta moves, and EM raises the exact likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig, TrainConfig
from models.errors import ConfigError
from models.mcem import TRAIN_ACCEPT, TRAIN_LOG_JOINT, HMCSettings, MCEMTrainer
from models.quadrature import grid_log_marginal
from models.vae import VAE


def _teacher(seed: int = 3) -> VAE:
    model = VAE(
        ModelConfig(feature_shape=(8,), latent_dim=1, hidden_sizes=(16,), activation="tanh"),
        seed=seed,
    )
    for layer in model.decoder.layers:
        layer.w.assign(layer.w * 3.0)
    return model


def _data(model: VAE, n: int, seed: int) -> tf.Tensor:
    z = model.prior().sample(n, seed=tf.constant([seed, 0]))
    return model.likelihood(z).sample(seed=tf.constant([seed, 1]))


def test_hmc_chains_sample_the_exact_posterior_at_target_acceptance():
    model = _teacher()
    x = _data(model, 4, seed=1)
    chains_per_point = 250
    mcem = MCEMTrainer(
        model, TrainConfig(), num_train=4 * chains_per_point, hmc=HMCSettings(updates_per_sample=0)
    )
    index = tf.range(4 * chains_per_point)
    x_rep = tf.repeat(x, chains_per_point, axis=0)
    accepts = [
        float(mcem.sample_posterior(x_rep, index, tf.constant([0, i]))[1]) for i in range(80)
    ]
    exact = grid_log_marginal(model, x)
    chains = mcem.chains.numpy().reshape(4, chains_per_point)
    # Monte Carlo error of a mean over 250 (correlated) draws from posteriors of std ~0.5: ~0.04.
    np.testing.assert_allclose(chains.mean(1), exact["posterior_mean"].ravel(), atol=0.12)
    np.testing.assert_allclose(chains.std(1), exact["posterior_std"].ravel(), atol=0.1)
    assert 0.8 < np.mean(accepts[-20:]) < 0.97  # target 0.9


def test_m_step_moves_only_the_decoder():
    model = _teacher()
    x = _data(model, 50, seed=2)
    mcem = MCEMTrainer(model, TrainConfig(learning_rate=0.01), num_train=50)
    chains0 = mcem.chains.numpy().copy()
    enc0 = [v.numpy().copy() for v in model.encoder.trainable_variables]
    dec0 = [v.numpy().copy() for v in model.decoder.trainable_variables]
    assert bool(mcem.update((x, tf.range(50))))
    assert all(
        np.array_equal(a, v.numpy())
        for a, v in zip(enc0, model.encoder.trainable_variables, strict=True)
    )
    assert any(
        not np.array_equal(a, v.numpy())
        for a, v in zip(dec0, model.decoder.trainable_variables, strict=True)
    )
    means, n = mcem.sums.means()
    assert n == 50 and np.isfinite(means[TRAIN_LOG_JOINT]) and 0 < means[TRAIN_ACCEPT] <= 1
    moved = np.any(mcem.chains.numpy() != chains0, axis=1)
    assert moved.mean() > 0.5  # the HMC move was accepted for most rows (target acceptance 0.9)


def test_mcem_raises_exact_log_likelihood_of_data():
    teacher = _teacher(seed=3)
    x = _data(teacher, 400, seed=9)
    student = VAE(teacher.config, seed=21)
    mcem = MCEMTrainer(student, TrainConfig(learning_rate=0.01, seed=13), num_train=400)
    before = grid_log_marginal(student, x)["log_marginal"].mean()
    for i in range(200):
        rows = tf.range(i % 4 * 100, i % 4 * 100 + 100)
        assert bool(mcem.update((tf.gather(x, rows), rows)))
    after = grid_log_marginal(student, x)["log_marginal"].mean()
    teacher_ll = grid_log_marginal(teacher, x)["log_marginal"].mean()
    assert after > before + 0.5 * (teacher_ll - before)


def test_bad_hmc_settings_are_config_errors():
    with pytest.raises(ConfigError, match="num_leapfrog_steps"):
        HMCSettings(num_leapfrog_steps=0)
    with pytest.raises(ConfigError, match="target_accept_prob"):
        HMCSettings(target_accept_prob=1.5)


def test_a_non_finite_m_step_is_not_applied():
    """NaN data already stops at the E step (see tests/models/test_trainers.py); here the M step's
    own guard: a NaN gradient leaves the decoder and the optimiser slots as they were."""
    model = _teacher()
    mcem = MCEMTrainer(model, TrainConfig(learning_rate=0.01, jit_compile=False), num_train=8)
    x = _data(model, 8, seed=3)
    z = tf.fill([8, 1], float("nan"))
    before = [v.numpy().copy() for v in mcem.variables]
    _, applied = mcem._m_step(x, z)
    assert not bool(applied) and int(mcem.optimizer.iterations.numpy()) == 0
    for a, v in zip(before, mcem.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy())
    _, applied = mcem._m_step(x, tf.zeros([8, 1]))
    assert bool(applied) and int(mcem.optimizer.iterations.numpy()) == 1
