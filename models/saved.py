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

        @tf.function(
            input_signature=[tf.TensorSpec([None, d], tf.float32, name="x")], autograph=False
        )
        def encode(x):
            mean, std = model.posterior_params(x)
            return {"z_mean": mean, "z_std": std}

        @tf.function(
            input_signature=[tf.TensorSpec([None, k], tf.float32, name="z")], autograph=False
        )
        def decode(z):
            return {"x_mean": model.decode_mean(z)}

        self.encode = encode
        self.decode = decode


RESERVED_KEYS = ("format", "version", "model")


def save_model(model: VAE, path: str, extra: dict | None = None) -> str:
    """Write the SavedModel + config.json to ``path`` atomically; returns the absolute path.

    ``extra`` adds JSON-serialisable provenance to config.json (dataset, run id, ...). An existing
    model at ``path`` is replaced: the new one is written beside it and swapped in by renames, so
    readers see either the old or the new model, never a half-written one.
    """
    clash = sorted(set(extra or {}) & set(RESERVED_KEYS))
    if clash:
        raise ModelError(
            f"save_model(extra=...): keys {clash} are reserved in config.json; rename them"
        )
    path = os.path.abspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        serving = _Serving(model)
        tf.saved_model.save(
            serving, tmp, signatures={"encode": serving.encode, "decode": serving.decode}
        )
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": to_dict(model.config),
            **(extra or {}),
        }
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
        old = None
        if os.path.exists(path):
            old = f"{path}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)  # put the previous model back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_config(path: str) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole config.json) of a saved model directory."""
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as fh:
            meta = json.load(fh)
    except FileNotFoundError as exc:
        raise ModelError(
            f"{cfg_path}: not found; is {path} a model saved by aevb (save_model)?"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{cfg_path}: not valid JSON ({exc}); save the model again") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{cfg_path}: field 'format' is {found!r}, expected {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelError(
            f"{cfg_path}: field 'version' is {meta.get('version')!r}; this code reads version "
            f"{FORMAT_VERSION}: save the model again with this version"
        )
    if not isinstance(meta.get("model"), dict):
        raise ModelError(f"{cfg_path}: field 'model' is missing or not an object")
    return model_config_from_dict(meta["model"]), meta


def load_vae(path: str) -> VAE:
    """Rebuild the full VAE from a saved model directory (weights equal bit for bit).

    ``model.binarize`` is the train.binarize it was trained with (config.json's "binarize",
    "none" for models saved before the setting existed): evaluation binarizes the split likewise.
    """
    config, meta = read_config(path)
    model = VAE(config)
    model.binarize = str(meta.get("binarize", "none"))
    # The SavedModel's variables/ is an object-based checkpoint rooted at _Serving, whose child
    # "model" is the VAE: a Checkpoint with the same child name restores it structurally.
    try:
        status = tf.train.Checkpoint(model=model).read(os.path.join(path, "variables", "variables"))
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise ModelError(
            f"{path}: variables do not match the architecture in config.json ({exc}); "
            "the directory is damaged or was edited: save the model again"
        ) from exc
    return model


def load_serving(path: str):
    """The raw SavedModel: `.signatures["encode"](x=...)`, `.signatures["decode"](z=...)`."""
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ModelError(f"{path}: no saved_model.pb; is it a model saved by aevb (save_model)?")
    return tf.saved_model.load(path)
