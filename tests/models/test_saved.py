"""SavedModel + config.json: bit-exact round trips, serving signatures, atomic replace, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig
from models.errors import ModelError
from models.saved import load_serving, load_vae, read_config, save_model
from models.vae import VAE

X = tf.random.stateless_uniform([7, 12], seed=[1, 2])
Z = tf.random.stateless_normal([5, 3], seed=[3, 4])


def make(likelihood: str = "bernoulli") -> VAE:
    cfg = ModelConfig(
        feature_shape=(3, 4),
        latent_dim=3,
        hidden_sizes=(10, 6),
        likelihood=likelihood,
        activation="tanh",
        init="paper",
    )
    return VAE(cfg, seed=7)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_save_load_round_trip_is_bit_exact(tmp_path, likelihood):
    model = make(likelihood)
    path = save_model(model, str(tmp_path / "m"), extra={"dataset": "toy", "run_id": "abc"})
    loaded = load_vae(path)
    assert loaded.config == model.config
    names = [v.name for v in model.trainable_variables]
    assert [v.name for v in loaded.trainable_variables] == names
    for a, b in zip(model.trainable_variables, loaded.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.posterior_params(X), loaded.posterior_params(X), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(model.decode_mean(Z).numpy(), loaded.decode_mean(Z).numpy())
    np.testing.assert_array_equal(
        model.likelihood(Z[:, None]).log_prob(X[:5]).numpy(),
        loaded.likelihood(Z[:, None]).log_prob(X[:5]).numpy(),
    )


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_serving_signatures_reproduce_the_model_bit_for_bit(tmp_path, likelihood):
    """Bit-exact against the same computation as a tf.function (graph mode, as served).

    Eager execution may differ in the last bit (graph-mode op fusion), hence the separate check.
    """
    model = make(likelihood)
    serving = load_serving(save_model(model, str(tmp_path / "m")))
    assert set(serving.signatures) == {"encode", "decode"}
    enc = serving.signatures["encode"](x=X)
    assert set(enc) == {"z_mean", "z_std"}
    mean, std = tf.function(model.posterior_params)(X)
    np.testing.assert_array_equal(enc["z_mean"].numpy(), mean.numpy())
    np.testing.assert_array_equal(enc["z_std"].numpy(), std.numpy())
    dec = serving.signatures["decode"](z=Z)
    assert set(dec) == {"x_mean"} and dec["x_mean"].shape == (5, 12)
    np.testing.assert_array_equal(dec["x_mean"].numpy(), tf.function(model.decode_mean)(Z).numpy())
    eager_mean, _ = model.posterior_params(X)
    np.testing.assert_allclose(enc["z_mean"].numpy(), eager_mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        dec["x_mean"].numpy(), model.decode_mean(Z).numpy(), rtol=1e-6, atol=1e-7
    )


def test_config_json_records_format_model_and_extra(tmp_path):
    model = make()
    path = save_model(model, str(tmp_path / "m"), extra={"dataset": "toy"})
    config, meta = read_config(path)
    assert config == model.config
    assert meta["format"] == "aevb-savedmodel" and meta["version"] == 1 and meta["dataset"] == "toy"
    assert meta["model"]["feature_shape"] == [3, 4]


def test_saving_over_an_existing_model_replaces_it_and_leaves_no_temporaries(tmp_path):
    path = str(tmp_path / "m")
    save_model(make(), path)
    other = VAE(make().config, seed=8)
    save_model(other, path)
    np.testing.assert_array_equal(
        load_vae(path).encoder.layers[0].w.numpy(), other.encoder.layers[0].w.numpy()
    )
    assert os.listdir(tmp_path) == ["m"]


def test_reserved_extra_keys_are_refused(tmp_path):
    with pytest.raises(ModelError, match=r"keys \['model'\] are reserved"):
        save_model(make(), str(tmp_path / "m"), extra={"model": "x"})
    assert not os.listdir(tmp_path)


def test_bad_directories_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="config.json: not found"):
        read_config(str(tmp_path))
    with pytest.raises(ModelError, match="no saved_model.pb"):
        load_serving(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelError, match="'format' is 'other', expected 'aevb-savedmodel'"):
        read_config(str(tmp_path))


def test_weights_that_do_not_match_config_json_are_refused(tmp_path):
    path = save_model(make(), str(tmp_path / "m"))
    with open(os.path.join(path, "config.json")) as fh:
        meta = json.load(fh)
    meta["model"]["hidden_sizes"] = [11, 6]
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(ModelError, match="do not match the architecture"):
        load_vae(path)


@pytest.mark.slow
def test_a_process_with_only_tensorflow_serves_the_model(tmp_path):
    """The SavedModel needs neither this project nor TFP to serve encode/decode."""
    model = make("gaussian")
    path = save_model(model, str(tmp_path / "m"))
    np.save(tmp_path / "x.npy", X.numpy())
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.modules["tensorflow_probability"] = None  # importing it would fail
        import tensorflow as tf
        m = tf.saved_model.load({path!r})
        out = m.signatures["encode"](x=tf.constant(np.load({str(tmp_path / "x.npy")!r})))
        np.save({str(tmp_path / "z.npy")!r}, out["z_mean"].numpy())
    """)
    env = {**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = tf.function(model.posterior_params)(X)[0].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), served)
