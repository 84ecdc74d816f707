"""train.precision = "mixed_bfloat16": bfloat16 matmuls, float32 for everything else (models/precision.py).

Closed forms: a dot product of 4096 terms (bfloat16 accumulation stops at 256 + 1 = 256), the
rounding of bfloat16 inputs, and a Bernoulli log-likelihood over 4096 pixels whose sum bfloat16
would get wrong by tens of nats.
"""

from __future__ import annotations

import dataclasses
import math
from typing import get_args

import numpy as np
import pytest
import tensorflow as tf

from models import precision
from models.config import ModelConfig, Precision, TrainConfig
from models.errors import ConfigError, ModelError
from models.objectives import elbo
from models.training import Trainer, fingerprint, fit
from models.vae import VAE

N = 4096


def test_precision_is_validated_and_the_choices_agree():
    assert get_args(Precision) == precision.PRECISIONS
    assert TrainConfig().precision == "float32"
    with pytest.raises(ConfigError, match="train.precision='bf16' is not allowed"):
        TrainConfig(precision="bf16")
    with pytest.raises(ConfigError, match="not supported with train.theta='full_vb'"):
        TrainConfig(precision="mixed_bfloat16", theta="full_vb")


@pytest.mark.parametrize("jit", [False, True])
def test_bfloat16_products_accumulate_in_float32(jit):
    ones = tf.ones([2, N])

    def products():
        with precision.compute_dtype("mixed_bfloat16"):
            exact = precision.matmul(ones, tf.ones([N, 3]))  # 4096: bf16 accumulation gives 256
            rounded = precision.matmul(ones * (1 + 2**-10), tf.ones([N, 1]))  # inputs -> bf16
        return exact, rounded, precision.matmul(ones * (1 + 2**-10), tf.ones([N, 1]))

    exact, rounded, full = tf.function(products, jit_compile=jit)()
    assert exact.dtype == tf.float32
    np.testing.assert_array_equal(exact.numpy(), np.full((2, 3), float(N)))
    np.testing.assert_array_equal(rounded.numpy(), np.full((2, 1), float(N)))  # 1 + 2^-10 -> 1
    np.testing.assert_allclose(full.numpy(), N * (1 + 2**-10), rtol=1e-6)  # outside: float32


def _constant_decoder_vae() -> tuple[VAE, np.ndarray]:
    """Decoder weights 0, output bias b: p(x|z) = prod_d Bernoulli(sigmoid(b_d)) for every z."""
    cfg = ModelConfig(feature_shape=(N,), latent_dim=2, hidden_sizes=(8,), activation="tanh")
    vae = VAE(cfg, seed=0)
    b = np.random.default_rng(0).normal(0, 3, N).astype(np.float32)
    for layer in vae.decoder.layers:
        layer.w.assign(tf.zeros_like(layer.w))
    vae.decoder.layers[-1].b.assign(b)
    return vae, b


def test_log_likelihood_and_the_bound_stay_float32_under_mixed_precision():
    vae, b = _constant_decoder_vae()
    x = (np.random.default_rng(1).random((3, N)) < 0.4).astype(np.float32)
    b64 = b.astype(np.float64)
    want = (x * b64 - np.logaddexp(0, b64)).sum(-1)  # sum_d x_d b_d - softplus(b_d), ~ -1e4

    @tf.function(jit_compile=True)
    def bound(x):
        with precision.compute_dtype("mixed_bfloat16"):
            return elbo(vae, x, tf.constant([0, 0]), "B", 1)

    got = bound(tf.constant(x))
    assert got.reconstruction.dtype == got.kl.dtype == got.elbo.dtype == tf.float32
    # float32 summation of 4096 terms: ~1e-3 nats; bfloat16 (8 bits) would be off by > 10.
    np.testing.assert_allclose(got.reconstruction.numpy(), want, rtol=0, atol=0.02)


def _data(n: int = 60, d: int = 12) -> np.ndarray:
    return (np.random.default_rng(2).random((n, d)) < 0.3).astype(np.float32)


def _mixed() -> TrainConfig:
    return TrainConfig(batch_size=20, epochs=2, jit_compile=False, precision="mixed_bfloat16")


def test_a_mixed_step_multiplies_in_bfloat16_and_keeps_float32_state(tmp_path):
    cfg = ModelConfig(feature_shape=(12,), latent_dim=2, hidden_sizes=(8,))
    step_ops = {}
    for mode in ("float32", "mixed_bfloat16"):
        trainer = Trainer(VAE(cfg, seed=0), dataclasses.replace(_mixed(), precision=mode), 60)
        graph = trainer.update.get_concrete_function(tf.TensorSpec([20, 12])).graph
        step_ops[mode] = {
            op.get_attr("T")
            for op in graph.get_operations()
            if op.type in ("MatMul", "BatchMatMulV2")  # fmt: skip
        }
    assert step_ops["float32"] == {tf.float32}
    assert tf.bfloat16 in step_ops["mixed_bfloat16"]
    vae = VAE(cfg, seed=0)
    x = _data()
    result = fit(vae, lambda e: tf.data.Dataset.from_tensor_slices(x).batch(20), None, 60, _mixed(),
                 checkpoint_dir=str(tmp_path))  # fmt: skip
    assert math.isfinite(result.best_valid_elbo)
    saved = tf.train.list_variables(str(tmp_path))
    dtypes = {
        tf.train.load_checkpoint(str(tmp_path)).get_variable_to_dtype_map()[name]
        for name, _ in saved
        if name.startswith(("model/", "optimizer/"))
    }
    assert dtypes <= {tf.float32, tf.int64}  # weights, Adam slots, iterations


def test_checkpoints_of_one_precision_do_not_resume_the_other(tmp_path):
    cfg = ModelConfig(feature_shape=(12,), latent_dim=2, hidden_sizes=(8,))
    f32 = dataclasses.replace(_mixed(), precision="float32")
    assert "precision" not in fingerprint(f32, VAE(cfg), 60)  # as before the key existed
    assert '"precision": "mixed_bfloat16"' in fingerprint(_mixed(), VAE(cfg), 60)
    x = _data()
    data = lambda e: tf.data.Dataset.from_tensor_slices(x).batch(20)  # noqa: E731
    fit(VAE(cfg, seed=0), data, None, 60, f32, checkpoint_dir=str(tmp_path))
    with pytest.raises(ModelError, match="different model/train config"):
        fit(VAE(cfg, seed=0), data, None, 60, _mixed(), checkpoint_dir=str(tmp_path))
