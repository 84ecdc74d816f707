"""Save and load a trained model as a TF SavedModel plus `config.json`. No pickle anywhere.

Layout of a saved model directory:

    config.json      {"format": "aevb-savedmodel", "version": 1, "model": ModelConfig fields}
    saved_model.pb, variables/    signatures encode(x) -> {z_mean, z_std}, decode(z) -> {x_mean}

The SavedModel serves any process with only TensorFlow installed. `load_vae` rebuilds the full
`VAE` (needed for log-likelihoods) from config.json and the SavedModel's variables. Writes go to a
temporary sibling directory that is renamed into place, so a half-written model is never visible.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import tensorflow as tf

from models.config import ModelConfig, model_config_from_dict, to_dict
from models.errors import ModelError
from models.vae import VAE

FORMAT = "aevb-savedmodel"
FORMAT_VERSION = 1


class _Serving(tf.Module):
    def __init__(self, model: VAE):
        super().__init__(name="aevb_serving")
        self.model = model
        d, k = model.config.input_dim, model.config.latent_dim

        @tf.function(input_signature=[tf.TensorSpec([None, d], tf.float32, name="x")])
        def encode(x):
            mean, std = model.posterior_params(x)
            return {"z_mean": mean, "z_std": std}

        @tf.function(input_signature=[tf.TensorSpec([None, k], tf.float32, name="z")])
        def decode(z):
            return {"x_mean": model.decode_mean(z)}

        self.encode = encode
        self.decode = decode


def save_model(model: VAE, path: str, extra: dict | None = None) -> str:
    """Write the SavedModel + config.json to ``path`` atomically; returns ``path``."""
    path = os.path.abspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    serving = _Serving(model)
    tf.saved_model.save(serving, tmp, signatures={"encode": serving.encode, "decode": serving.decode})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": to_dict(model.config), **(extra or {})}
    with open(os.path.join(tmp, "config.json"), "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def read_config(path: str) -> tuple[ModelConfig, dict]:
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as fh:
            meta = json.load(fh)
    except FileNotFoundError as exc:
        raise ModelError(f"{cfg_path}: not found; is {path} a model saved by aevb (save_model)?") from exc
    if meta.get("format") != FORMAT:
        raise ModelError(f"{cfg_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    return model_config_from_dict(meta["model"]), meta


def load_vae(path: str) -> VAE:
    """Rebuild the full VAE from a saved model directory (weights equal bit for bit)."""
    config, _ = read_config(path)
    model = VAE(config)
    # The SavedModel's variables/ is an object-based checkpoint rooted at _Serving, whose child
    # "model" is the VAE: a Checkpoint with the same child name restores it structurally.
    status = tf.train.Checkpoint(model=model).read(os.path.join(path, "variables", "variables"))
    try:
        status.assert_existing_objects_matched()
    except AssertionError as exc:
        raise ModelError(f"{path}: variables do not match the architecture in config.json") from exc
    return model


def load_serving(path: str):
    """The raw SavedModel: `.signatures["encode"](x=...)`, `.signatures["decode"](z=...)`."""
    return tf.saved_model.load(path)
