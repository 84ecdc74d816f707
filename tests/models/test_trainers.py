"""What every trainer shares: a non-finite update changes nothing a checkpoint holds, weight decay
has one path (checked against the optimisers' closed forms), and learning curves run the same
epoch loop and steps as `fit`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig, TrainConfig
from models.distributed import DistributedTrainer
from models.errors import ConfigError, TrainingDivergedError
from models.experiments import _batches, make_trainer, train_curve
from models.full_vb import FullVBTrainer, FullVBVAE
from models.optim import Adam
from models.training import Trainer
from models.vae import VAE

D, N, M = 8, 10, 10
MODEL = ModelConfig(feature_shape=(D,), latent_dim=2, hidden_sizes=(8,), activation="tanh")
CFG = TrainConfig(batch_size=M, learning_rate=0.01, weight_decay=5.0, jit_compile=False, seed=3)


def _x(n: int = M, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, D)) < 0.4).astype(np.float32)


def _build(kind: str, cfg: TrainConfig = CFG):
    """(trainer, batch maker): batches are (x, rows) for MCEM, x for the others."""
    if kind == "full_vb":
        return FullVBTrainer(FullVBVAE(MODEL, seed=0), cfg, N), lambda x: x
    vae = VAE(MODEL, seed=0)
    if kind == "mcem":
        return make_trainer("mcem", vae, cfg, N), lambda x: (x, tf.range(M))
    if kind == "plain_xla":
        return Trainer(vae, dataclasses.replace(cfg, jit_compile=True), N), lambda x: x
    trainers = {
        "plain": lambda: Trainer(vae, cfg, N),
        "distributed": lambda: DistributedTrainer(vae, cfg, N, tf.distribute.get_strategy()),
        "experiment_aevb": lambda: make_trainer("aevb", vae, cfg, N),
        "wake_sleep": lambda: make_trainer("wake_sleep", vae, cfg, N),
    }
    return trainers[kind](), lambda x: x


KINDS = ["plain", "plain_xla", "distributed", "full_vb", "experiment_aevb", "wake_sleep", "mcem"]


def _saved(trainer, path: str) -> dict[str, np.ndarray]:
    """Every tensor the trainer's checkpoint holds (weights, slots, counters, chains, ...)."""
    trainer.checkpoint().write(path)
    names = [n for n, _ in tf.train.list_variables(path) if "OBJECT_GRAPH" not in n]
    return {n: tf.train.load_variable(path, n) for n in names}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# -- the guard: checked before the update ------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_update_leaves_every_variable_unchanged(kind, tmp_path):
    trainer, batch = _build(kind)
    assert bool(trainer.update(batch(tf.constant(_x(seed=1)))))  # slots and counters non-trivial
    before = _saved(trainer, str(tmp_path / "before"))
    sums_before = trainer.sums.total.numpy().copy()
    poisoned = _x(seed=2)
    poisoned[3, 4] = np.nan
    assert not bool(trainer.update(batch(tf.constant(poisoned))))
    assert _same(_saved(trainer, str(tmp_path / "after")), before)
    np.testing.assert_array_equal(trainer.sums.total.numpy(), sums_before)
    assert int(trainer.state.step.numpy()) == 1
    # The comparison can fail: a good update afterwards does change the checkpointed state.
    assert bool(trainer.update(batch(tf.constant(_x(seed=3)))))
    assert not _same(_saved(trainer, str(tmp_path / "later")), before)
    assert int(trainer.state.step.numpy()) == 2


def test_an_infinite_gradient_is_refused_even_with_a_finite_loss():
    var = tf.Variable([1.0, -2.0])
    opt, counted = Adam([var], learning_rate=0.1), tf.Variable(0)
    bump = lambda: counted.assign_add(1)  # noqa: E731
    applied = opt.apply_if_finite([tf.constant([0.5, np.inf])], [var], tf.constant(1.0), bump)
    assert not bool(applied)
    np.testing.assert_array_equal(var.numpy(), [1.0, -2.0])
    assert int(opt.iterations.numpy()) == 0 and int(counted.numpy()) == 0
    assert not any(s.numpy().any() for s in opt.m + opt.v)
    assert not bool(opt.apply_if_finite([tf.constant([0.5, 0.5])], [var], tf.constant(np.nan)))
    assert bool(opt.apply_if_finite([tf.constant([0.5, 0.5])], [var], tf.constant(1.0), bump))
    assert int(opt.iterations.numpy()) == 1 and int(counted.numpy()) == 1
    assert not np.array_equal(var.numpy(), [1.0, -2.0])


# -- weight decay: one path ----------------------------------------------------------------------------
def _optimisers(kind: str, trainer) -> list[tuple[object, list[tf.Variable], set]]:
    """(optimiser, its variables, refs of the variables that carry the prior) per optimiser."""
    if kind == "wake_sleep":
        dec, enc = trainer.generative_variables, trainer.recognition_variables
        return [
            (trainer.wake_optimizer, dec, {v.ref() for v in dec}),
            (trainer.sleep_optimizer, enc, {v.ref() for v in enc}),
        ]
    if kind == "full_vb":  # theta's prior is the KL term: only the encoder is decayed
        encoder = trainer.model.vae.encoder.trainable_variables
        return [(trainer.optimizer, trainer.variables, {v.ref() for v in encoder})]
    return [(trainer.optimizer, trainer.variables, {v.ref() for v in trainer.variables})]


def _closed_form(kind: str, theta: np.ndarray, g: np.ndarray, c: float, lr: float, steps: int):
    """``steps`` updates with the fixed data gradient g plus the decay c * theta, in float64."""
    theta = theta.astype(np.float64)
    s1, s2 = np.zeros_like(theta), np.zeros_like(theta)  # Adam's m and v, or Adagrad's G (s2)
    for t in range(1, steps + 1):
        full = g + c * theta
        if kind == "adagrad":  # G += g^2; theta -= lr g / (sqrt(G) + eps)
            s2 += full**2
            theta = theta - lr * full / (np.sqrt(s2) + 1e-8)
        else:  # Adam with bias correction folded into the step size, eps outside
            s1 = 0.9 * s1 + 0.1 * full
            s2 = 0.999 * s2 + 0.001 * full**2
            lr_t = lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            theta = theta - lr_t * s1 / (np.sqrt(s2) + 1e-7)
    return theta


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "plain_xla"])
def test_every_trainer_decays_by_weight_decay_over_n_in_its_optimiser(kind, optimizer):
    """With a fixed data gradient g the update is the closed form for g + (w/N) theta on the
    variables with the prior and for g alone on the others (g is comparable to (w/N) theta, so a
    wrong scale, a missing or an extra decay would show)."""
    cfg = dataclasses.replace(CFG, optimizer=optimizer)
    trainer, _ = _build(kind, cfg)
    c = cfg.weight_decay / N
    for opt, variables, decayed in _optimisers(kind, trainer):
        assert opt.decay == pytest.approx(c)
        thetas = [v.numpy() for v in variables]
        grads = [np.full(t.shape, 0.1, np.float32) for t in thetas]
        for _ in range(3):
            opt.apply([tf.constant(g) for g in grads], variables)
        for v, theta, g in zip(variables, thetas, grads, strict=True):
            rate = c if v.ref() in decayed else 0.0
            expected = _closed_form(optimizer, theta, g, rate, cfg.learning_rate, 3)
            np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-7)
        assert any(v.ref() in decayed for v in variables)


# -- learning curves run the shared loop ------------------------------------------------------------
def test_train_curve_takes_exactly_the_steps_of_the_trainer():
    x = _x(50, seed=4)
    cfg = dataclasses.replace(CFG, weight_decay=1.0)
    model, curve = train_curve("aevb", x, x[:20], MODEL, cfg, [20, 50])
    assert curve.column("samples") == [20.0, 50.0]
    assert all(np.isfinite(curve.column("train_objective")))
    assert curve.column("seconds")[1] > curve.column("seconds")[0] > 0
    # By hand: the same model, the same shuffled rows, five updates of models.training.Trainer.
    reference = VAE(MODEL, seed=cfg.seed)
    trainer = Trainer(reference, dataclasses.replace(cfg, epochs=2, patience=0), len(x))
    rows = _batches(len(x), M, np.random.default_rng(cfg.seed))
    for _ in range(5):
        assert bool(trainer.update(tf.constant(x[next(rows)])))
    for a, b in zip(model.trainable_variables, reference.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_train_curve_budgets_must_be_one_update_apart():
    with pytest.raises(ConfigError, match="at least one update"):
        train_curve("aevb", _x(50), _x(20), MODEL, CFG, [20, 20])
    with pytest.raises(ConfigError, match="budgets > 0"):
        train_curve("aevb", _x(50), _x(20), MODEL, CFG, [0])


def test_a_nan_in_a_curve_stops_it_with_the_step():
    x = _x(50, seed=5)
    x[:, 0] = np.nan
    with pytest.raises(TrainingDivergedError, match="global step 1") as info:
        train_curve("wake_sleep", x, x[:20], MODEL, CFG, [20])
    assert (info.value.epoch, info.value.step) == (1, 1)
