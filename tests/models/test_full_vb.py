"""Full VB over theta (App. F): the sampled decoder is the VAE decoder at sigma -> 0, the theta KL is the
Gaussian closed form (value and gradients), the per-datapoint objective subtracts KL/N, and training
learns both the means and the scales of q(theta)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from models.config import ModelConfig, TrainConfig
from models.errors import ConfigError, ModelError, TrainingDivergedError
from models.full_vb import FullVBVAE, fit_full_vb, fit_vae_full_vb
from models.objectives import elbo
from models.training import fit
from models.vae import VAE

tfd = tfp.distributions


def _config(likelihood: str = "bernoulli") -> ModelConfig:
    return ModelConfig(
        feature_shape=(8,),
        latent_dim=2,
        hidden_sizes=(16,),
        activation="tanh",
        likelihood=likelihood,
    )


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_sampled_decoder_with_tiny_std_is_the_vae_decoder(likelihood):
    model = FullVBVAE(_config(likelihood), seed=1, initial_std=1e-7)
    z = tf.random.stateless_normal([3, 5, 2], seed=[1, 2])
    x = tf.random.stateless_uniform([5, 8], seed=[3, 4], minval=0.05, maxval=0.95)
    expected = model.vae.likelihood(z).log_prob(x)
    got = model.sample_decoder(tf.constant([0, 1])).likelihood(z).log_prob(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_kl_theta_matches_closed_form_and_its_gradients():
    model = FullVBVAE(_config(), seed=2, initial_std=0.3, prior_std=2.0)
    for rho in model.rho:  # unequal scales so the test is not symmetric by accident
        rho[0].assign(tf.random.stateless_normal(rho[0].shape, seed=[5, 6]))
    mus = [v for layer in model.vae.decoder.layers for v in (layer.w, layer.b)]
    rhos = [r for pair in model.rho for r in pair]
    with tf.GradientTape() as tape:
        kl = model.kl_theta()
    grads = tape.gradient(kl, mus + rhos)
    expected = sum(
        float(
            tf.reduce_sum(
                tfd.kl_divergence(tfd.Normal(m, tf.math.softplus(r)), tfd.Normal(0.0, 2.0))
            )
        )
        for m, r in zip(mus, rhos, strict=True)
    )
    assert float(kl) == pytest.approx(expected, rel=1e-5)
    for m, g in zip(mus, grads[: len(mus)], strict=True):  # d KL / d mu = mu / s^2
        np.testing.assert_allclose(g.numpy(), m.numpy() / 4.0, rtol=1e-5, atol=1e-7)
    for r, g in zip(
        rhos, grads[len(mus) :], strict=True
    ):  # d KL / d rho = (sd / s^2 - 1 / sd) * sigmoid(rho)
        sd = tf.math.softplus(r).numpy()
        np.testing.assert_allclose(
            g.numpy(), (sd / 4.0 - 1.0 / sd) * tf.sigmoid(r).numpy(), rtol=1e-4
        )


def test_objective_is_data_bound_minus_kl_over_n_and_matches_map_bound_at_tiny_std():
    model = FullVBVAE(_config(), seed=3, initial_std=1e-7)
    x = tf.cast(tf.random.stateless_uniform([64, 8], seed=[7, 8]) > 0.5, tf.float32)
    seed = tf.constant([9, 10])
    out = model.objective(x, seed, num_train=500)
    assert float(out["bound"]) == pytest.approx(
        float(out["data_elbo"]) - float(out["kl_theta"]) / 500, rel=1e-6
    )
    _, seed_z = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    map_bound = float(tf.reduce_mean(elbo(model.vae, x, seed_z, "B", 1).elbo))
    assert float(out["data_elbo"]) == pytest.approx(map_bound, abs=1e-3)


def test_fit_full_vb_learns_means_and_scales():
    model = FullVBVAE(_config(), seed=4, initial_std=0.01)
    x = tf.cast(tf.random.stateless_uniform([300, 8], seed=[1, 1]) > 0.7, tf.float32)
    train = tf.data.Dataset.from_tensor_slices(x).batch(50)
    std0 = np.concatenate([s.numpy().ravel() for s in model.parameter_std()])
    result = fit_full_vb(
        model, lambda epoch: train, train, 300, TrainConfig(epochs=15, learning_rate=0.01)
    )
    std1 = np.concatenate([s.numpy().ravel() for s in model.parameter_std()])
    history = result.history
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"] + 0.3
    # With N=300 the KL(q||p)/N pressure widens most weights from their 0.01 start (Adam moves
    # rho ~ log sigma by at most ~lr per step, so 90 steps allow at most a factor ~2.5).
    assert np.median(std1) > 1.5 * np.median(std0)
    assert all(math.isfinite(h["train_elbo"]) for h in history)


def test_bad_scales_are_config_errors():
    with pytest.raises(ConfigError, match="initial_std"):
        FullVBVAE(_config(), initial_std=0.0)


def test_fit_full_vb_resumes_from_its_checkpoint(tmp_path):
    x = tf.cast(tf.random.stateless_uniform([200, 8], seed=[2, 2]) > 0.6, tf.float32)

    def make(epoch: int) -> tf.data.Dataset:
        perm = np.random.default_rng(epoch).permutation(200)
        return tf.data.Dataset.from_tensor_slices(tf.gather(x, perm)).batch(50)

    cfg = TrainConfig(epochs=4, learning_rate=0.01, patience=0, jit_compile=False)
    straight = FullVBVAE(_config(), seed=5)
    fit_full_vb(straight, make, None, 200, cfg)

    first = FullVBVAE(_config(), seed=5)
    fit_full_vb(
        first,
        make,
        None,
        200,
        TrainConfig(**{**cfg.__dict__, "epochs": 2}),
        checkpoint_dir=str(tmp_path),
    )
    resumed = FullVBVAE(_config(), seed=5)
    result = fit_full_vb(resumed, make, None, 200, cfg, checkpoint_dir=str(tmp_path))
    assert result.resumed_from_epoch == 2 and result.epochs_completed == 4
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0, 4.0]
    for a, b in zip(straight.trainable_variables, resumed.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def _binary(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 8)) < 0.4).astype(np.float32)


def _shuffled(x: np.ndarray, batch: int = 50):
    def make(epoch: int) -> tf.data.Dataset:
        perm = np.random.default_rng(epoch).permutation(len(x))
        return tf.data.Dataset.from_tensor_slices(x[perm]).batch(batch)

    return make


def test_full_vb_resume_with_a_different_config_is_refused(tmp_path):
    make = _shuffled(_binary(200, 3))
    cfg = TrainConfig(epochs=1, learning_rate=0.01, patience=0, jit_compile=False)
    fit_full_vb(FullVBVAE(_config(), seed=5), make, None, 200, cfg, checkpoint_dir=str(tmp_path))
    changed = TrainConfig(**{**cfg.__dict__, "epochs": 2, "learning_rate": 0.02})
    with pytest.raises(ModelError, match="different model/train config.*Delete the folder"):
        fit_full_vb(
            FullVBVAE(_config(), seed=5), make, None, 200, changed, checkpoint_dir=str(tmp_path)
        )
    # Nor may full VB resume a MAP run's checkpoint (same train config, another trainer).
    fit(VAE(_config(), seed=5), make, None, 200, cfg, checkpoint_dir=str(tmp_path / "map"))
    with pytest.raises(ModelError, match="different model/train config"):
        fit_vae_full_vb(
            VAE(_config(), seed=5), make, None, 200, cfg, checkpoint_dir=str(tmp_path / "map")
        )


def test_full_vb_nan_stops_with_epoch_and_step_before_the_update_is_applied(tmp_path):
    """XLA-compiled step (the default). The data of epoch 2 poisons its 3rd batch (global step
    4 + 3 = 7); just before handing it over, the generator records the weights of step 6."""
    x = _binary(200, 4)
    model = FullVBVAE(_config(), seed=6)
    seen: dict[str, list[np.ndarray]] = {}

    def make(epoch: int):
        for i in range(4):
            batch = x[i * 50 : (i + 1) * 50].copy()
            if epoch == 2 and i == 2:
                seen["weights"] = [v.numpy().copy() for v in model.trainable_variables]
                batch[7, 2] = np.nan
            yield tf.constant(batch)

    cfg = TrainConfig(epochs=3, learning_rate=0.01, patience=0)
    with pytest.raises(
        TrainingDivergedError, match=r"NaN/Inf at epoch 2, step 3 .*global step 7"
    ) as info:
        fit_full_vb(model, make, None, 200, cfg, checkpoint_dir=str(tmp_path))
    assert (info.value.epoch, info.value.step) == (2, 7)
    for a, v in zip(seen["weights"], model.trainable_variables, strict=True):
        np.testing.assert_array_equal(v.numpy(), a)  # the poisoned update was not applied
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")  # nothing of epoch 2


def test_full_vb_non_finite_validation_bound_stops_training():
    valid = _binary(40, 5)
    valid[0, 0] = np.inf
    cfg = TrainConfig(epochs=2, learning_rate=0.01, jit_compile=False)
    with pytest.raises(
        TrainingDivergedError, match=r"validation ELBO is (nan|-?inf) after epoch 1"
    ) as info:
        fit_full_vb(
            FullVBVAE(_config(), seed=7),
            _shuffled(_binary(100, 6)),
            tf.data.Dataset.from_tensor_slices(valid).batch(20),
            100,
            cfg,
        )
    assert (info.value.epoch, info.value.step) == (1, 2)
