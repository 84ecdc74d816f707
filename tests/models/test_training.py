"""The training loop: updates, optimiser maths, determinism, resume, early stopping, NaN guard."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from models import constants as C
from models.config import ModelConfig, TrainConfig
from models.errors import ModelError, TrainingDivergedError
from models.objectives import log_prior_theta
from models.optim import Adagrad, Adam
from models.training import Trainer, fit, train_epoch
from models.vae import VAE

D = 16
MODEL = ModelConfig(feature_shape=(D,), latent_dim=2, hidden_sizes=(16,), activation="tanh")
# Non-XLA steps keep these tests quick; tests/models/test_training_resume.py (slow) and test_saved.py
# run the default XLA-compiled step.
TRAIN = TrainConfig(
    epochs=3,
    batch_size=20,
    optimizer="adam",
    learning_rate=0.01,
    patience=0,
    seed=5,
    jit_compile=False,
)


def binary_data(n: int, seed: int, flip: bool = False) -> np.ndarray:
    """Rows from two prototypes with 10% pixel noise; ``flip`` gives the complementary patterns."""
    rng = np.random.default_rng(seed)
    protos = np.array([[1] * (D // 2) + [0] * (D // 2), [1, 0] * (D // 2)], np.float32)
    x = protos[rng.integers(0, 2, n)]
    x = np.where(rng.random(x.shape) < 0.1, 1 - x, x)
    return (1 - x if flip else x).astype(np.float32)


X_TRAIN, X_VALID = binary_data(100, 0), binary_data(40, 1)


def train_data(x: np.ndarray = X_TRAIN, batch: int = 20):
    return lambda epoch: (
        tf.data.Dataset.from_tensor_slices(x).shuffle(len(x), seed=epoch).batch(batch)
    )


def valid_data(x: np.ndarray = X_VALID):
    return tf.data.Dataset.from_tensor_slices(x).batch(20)


def weights(model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.trainable_variables]


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != C.EXAMPLES_PER_SECOND} for h in history]


# -- one step -----------------------------------------------------------------------------------------
def test_a_train_step_moves_the_weights_and_evaluation_does_not():
    model = VAE(MODEL, seed=0)
    trainer = Trainer(model, TRAIN, num_train=100)
    before = weights(model)
    trainer.evaluate(valid_data())
    assert_same(weights(model), before)
    assert int(trainer.state.step.numpy()) == 0 and int(trainer.optimizer.iterations.numpy()) == 0
    assert all(not m.numpy().any() for m in trainer.optimizer.m)  # no optimiser slot touched
    train_epoch(trainer, tf.data.Dataset.from_tensors(X_TRAIN[:20]), epoch=1)
    after = weights(model)
    assert all(
        not np.array_equal(a, b) for a, b in zip(before, after, strict=True)
    )  # every tensor moved
    assert int(trainer.state.step.numpy()) == 1 and int(trainer.optimizer.iterations.numpy()) == 1


def test_adagrad_step_with_decay_matches_the_closed_form():
    var = tf.Variable([0.5, -1.0, 2.0])
    opt = Adagrad([var], learning_rate=0.1, decay=0.2, epsilon=1e-8)
    g1, g2 = np.array([0.3, -0.2, 0.0]), np.array([-0.1, 0.4, 0.5])
    theta, acc = var.numpy().astype(np.float64), np.zeros(3)
    for g in (g1, g2):
        opt.apply([tf.constant(g, tf.float32)], [var])
        full = g + 0.2 * theta
        acc += full**2
        theta = theta - 0.1 * full / (np.sqrt(acc) + 1e-8)
    np.testing.assert_allclose(var.numpy(), theta, rtol=1e-6)


def test_adam_steps_with_decay_match_the_closed_form_with_bias_correction():
    var = tf.Variable([0.5, -1.0])
    opt = Adam([var], learning_rate=0.01, decay=0.1)
    theta, m, v = var.numpy().astype(np.float64), np.zeros(2), np.zeros(2)
    for t, g in enumerate(
        (np.array([0.3, -0.2]), np.array([-0.1, 0.4]), np.array([0.2, 0.2])), start=1
    ):
        opt.apply([tf.constant(g, tf.float32)], [var])
        full = g + 0.1 * theta
        m = 0.9 * m + 0.1 * full
        v = 0.999 * v + 0.001 * full**2
        lr_t = 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        theta = theta - lr_t * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(var.numpy(), theta, rtol=1e-5)
    assert int(opt.iterations.numpy()) == 3


def test_weight_decay_is_the_gradient_of_a_gaussian_prior_on_theta_over_n():
    """The trainer adds weight_decay / N * theta: the gradient of -log p(theta) / N, p = N(0, I / w)."""
    model = VAE(MODEL, seed=0)
    trainer = Trainer(model, dataclasses.replace(TRAIN, weight_decay=2.0), num_train=100)
    assert trainer.optimizer.decay == pytest.approx(2.0 / 100)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = -log_prior_theta(variables, 2.0) / 100
    for g, v in zip(tape.gradient(loss, variables), variables, strict=True):
        np.testing.assert_allclose(g.numpy(), trainer.optimizer.decay * v.numpy(), rtol=1e-6)


# -- whole runs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "likelihood,estimator",
    [("bernoulli", "A"), ("gaussian", "B"), ("continuous_bernoulli", "iwae")],
)
def test_training_raises_the_validation_bound(likelihood, estimator):
    model = VAE(dataclasses.replace(MODEL, likelihood=likelihood), seed=0)
    cfg = dataclasses.replace(TRAIN, epochs=4, estimator=estimator, num_samples=3)
    initial = Trainer(model, cfg, 100).evaluate(valid_data())[C.VALID_ELBO]
    result = fit(model, train_data(), valid_data(), 100, cfg)
    assert result.best_valid_elbo > initial + 1.0, (initial, result.best_valid_elbo)
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0, 4.0]


def test_same_seed_gives_identical_runs_and_another_seed_does_not():
    runs = []
    for seed in (5, 5, 6):
        model = VAE(MODEL, seed=0)
        result = fit(model, train_data(), valid_data(), 100, dataclasses.replace(TRAIN, seed=seed))
        runs.append((weights(model), strip_timing(result.history)))
    assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert not np.array_equal(runs[0][0][0], runs[2][0][0])


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = dataclasses.replace(
        TRAIN, epochs=4, optimizer="adagrad", learning_rate=0.05, weight_decay=1.0
    )
    whole = VAE(MODEL, seed=0)
    full = fit(whole, train_data(), valid_data(), 100, cfg)
    first = fit(
        VAE(MODEL, seed=0),
        train_data(),
        valid_data(),
        100,
        dataclasses.replace(cfg, epochs=2),
        checkpoint_dir=str(tmp_path),
    )
    assert first.epochs_completed == 2 and first.resumed_from_epoch == 0
    resumed_model = VAE(
        MODEL, seed=99
    )  # a fresh process would build a fresh model: all state comes from disk
    resumed = fit(resumed_model, train_data(), valid_data(), 100, cfg, checkpoint_dir=str(tmp_path))
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_completed == 4
    assert strip_timing(resumed.history) == strip_timing(full.history)
    assert (resumed.best_epoch, resumed.best_valid_elbo) == (full.best_epoch, full.best_valid_elbo)
    assert_same(weights(resumed_model), weights(whole))
    again = fit(
        VAE(MODEL, seed=0), train_data(), valid_data(), 100, cfg, checkpoint_dir=str(tmp_path)
    )
    assert again.resumed_from_epoch == 4 and again.epochs_completed == 4 and len(again.history) == 4


def test_resume_with_a_different_config_is_refused(tmp_path):
    fit(
        VAE(MODEL, seed=0),
        train_data(),
        None,
        100,
        dataclasses.replace(TRAIN, epochs=1),
        checkpoint_dir=str(tmp_path),
    )
    with pytest.raises(ModelError, match="different model/train config.*Delete the folder"):
        fit(
            VAE(MODEL, seed=0),
            train_data(),
            None,
            100,
            dataclasses.replace(TRAIN, learning_rate=0.5),
            checkpoint_dir=str(tmp_path),
        )


def test_early_stopping_returns_the_best_weights(tmp_path):
    """Validating on the complementary patterns: the better the fit to train, the worse on valid."""
    x_valid = binary_data(40, 1, flip=True)
    cfg = dataclasses.replace(TRAIN, epochs=30, patience=2, learning_rate=0.03)
    model = VAE(MODEL, seed=0)
    seen = []
    result = fit(
        model,
        train_data(),
        valid_data(x_valid),
        100,
        cfg,
        checkpoint_dir=str(tmp_path),
        on_epoch_end=lambda epoch, metrics: seen.append((epoch, metrics[C.VALID_ELBO])),
    )
    assert result.stopped_early
    assert result.epochs_completed == result.best_epoch + 2 < 30
    best = max(seen, key=lambda item: item[1])
    assert (result.best_epoch, result.best_valid_elbo) == best
    # The returned weights are the best epoch's: re-evaluating them gives its score (fixed eval seeds).
    again = Trainer(model, cfg, 100).evaluate(valid_data(x_valid))[C.VALID_ELBO]
    assert again == pytest.approx(result.best_valid_elbo, abs=1e-5)
    # A finished early-stopped run resumed with the same config trains nothing more.
    rerun = fit(
        VAE(MODEL, seed=0),
        train_data(),
        valid_data(x_valid),
        100,
        cfg,
        checkpoint_dir=str(tmp_path),
    )
    assert rerun.stopped_early and rerun.epochs_completed == result.epochs_completed


def test_patience_bookkeeping():
    state = Trainer(VAE(MODEL, seed=0), TRAIN, 100).state
    for epoch, score in enumerate([-5.0, -3.0, -4.0, -3.5, -2.0, -2.5, -2.5], start=1):
        state.record_epoch(epoch, score)
    assert int(state.best_epoch.numpy()) == 5 and float(state.best_elbo.numpy()) == -2.0
    assert state.patience_exhausted(2) and not state.patience_exhausted(3)
    assert not state.patience_exhausted(0)  # patience 0: never stop early


def test_epoch_callback_sees_every_metric_after_the_checkpoint_is_written(tmp_path):
    calls = []

    def callback(epoch, metrics):
        calls.append((epoch, sorted(metrics), tf.train.latest_checkpoint(str(tmp_path))))

    fit(
        VAE(MODEL, seed=0),
        train_data(),
        valid_data(),
        100,
        dataclasses.replace(TRAIN, epochs=2),
        checkpoint_dir=str(tmp_path),
        on_epoch_end=callback,
    )
    keys = sorted(
        [
            C.TRAIN_ELBO,
            C.TRAIN_KL,
            C.TRAIN_RECONSTRUCTION,
            C.EXAMPLES_PER_SECOND,
            C.VALID_ELBO,
            C.VALID_KL,
            C.VALID_RECONSTRUCTION,
            "epoch",
        ]
    )
    assert [(e, k) for e, k, _ in calls] == [(1, keys), (2, keys)]
    assert [os.path.basename(p) for _, _, p in calls] == ["ckpt-1", "ckpt-2"]


# -- NaN / Inf guard ------------------------------------------------------------------------------------
def test_injected_nan_stops_with_the_epoch_and_step(tmp_path):
    poisoned = X_TRAIN.copy()
    poisoned[45, 3] = np.nan  # epoch 2 is unshuffled below: row 45 is in its 3rd batch of 20

    def make(epoch):
        x = poisoned if epoch == 2 else X_TRAIN
        return tf.data.Dataset.from_tensor_slices(x).batch(20)

    model = VAE(MODEL, seed=0)
    with pytest.raises(
        TrainingDivergedError, match=r"NaN/Inf at epoch 2, step 3 .*global step 8"
    ) as info:
        fit(
            model,
            make,
            valid_data(),
            100,
            dataclasses.replace(TRAIN, epochs=3),
            checkpoint_dir=str(tmp_path),
        )
    assert (info.value.epoch, info.value.step) == (
        2,
        8,
    )  # 5 steps in epoch 1, then the 3rd of epoch 2
    assert all(np.all(np.isfinite(w)) for w in weights(model))  # the poisoned update was skipped
    assert (
        os.path.basename(tf.train.latest_checkpoint(str(tmp_path))) == "ckpt-1"
    )  # nothing of epoch 2


def test_non_finite_validation_bound_stops_training():
    bad_valid = X_VALID.copy()
    bad_valid[0, 0] = np.inf
    # An infinite input makes the bound inf or nan, depending on how log p(x|z) is evaluated.
    match = "validation ELBO is (nan|-?inf) after epoch 1"
    with pytest.raises(TrainingDivergedError, match=match) as info:
        fit(VAE(MODEL, seed=0), train_data(), valid_data(bad_valid), 100, TRAIN)
    assert info.value.epoch == 1


def test_empty_training_data_is_a_clear_error():
    empty = lambda epoch: tf.data.Dataset.from_tensor_slices(X_TRAIN[:0]).batch(20)  # noqa: E731
    with pytest.raises(ModelError, match="epoch 1: the training data yielded no batches"):
        fit(VAE(MODEL, seed=0), empty, None, 100, TRAIN)
