"""Model/train configuration: presets, validation messages, dict round trips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    model_config_from_dict,
    preset_overrides,
    to_dict,
)
from models.errors import ConfigError


def build(preset: str) -> tuple[ModelConfig, TrainConfig]:
    over = preset_overrides(preset)
    return ModelConfig(**over["model"]), TrainConfig(**over["train"])


def test_every_preset_builds_valid_configs():
    for name in PRESETS:
        model, train = build(name)
        assert model.input_dim == 64 and train.epochs >= 1


def test_paper_preset_is_section_5_of_the_paper():
    model, train = build("paper")
    assert (model.activation, model.hidden_sizes, model.init) == ("tanh", (500,), "paper")
    assert (train.batch_size, train.num_samples, train.estimator) == (100, 1, "B")
    assert (train.optimizer, train.learning_rate, train.weight_decay) == ("adagrad", 0.02, 1.0)
    assert train.learning_rate in (0.01, 0.02, 0.1)  # the paper's Adagrad step-size grid


def test_default_and_fast_presets_are_the_modern_settings():
    model, train = build("default")
    assert (model.activation, model.init, train.optimizer, train.weight_decay) == (
        "relu",
        "glorot",
        "adam",
        0.0,
    )
    _, fast = build("fast")
    assert fast.batch_size == 1000 and fast.jit_compile


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"likelihood": "poisson"},
            r"model.likelihood='poisson' is not allowed; choose one of 'bernoulli'",
        ),
        ({"latent_dim": 0}, r"model.latent_dim=0 must be > 0"),
        ({"hidden_sizes": (10, -1)}, r"model.hidden_sizes=\(10, -1\) must be positive"),
        ({"hidden_sizes": "500"}, r"model.hidden_sizes='500' must be a list of positive integers"),
        ({"feature_shape": ()}, r"model.feature_shape=\(\) must be non-empty"),
    ],
)
def test_model_config_errors_name_the_field_and_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"optimizer": "sgd"},
            r"train.optimizer='sgd' is not allowed; choose one of 'adam', 'adagrad'",
        ),
        ({"estimator": "C"}, r"train.estimator='C' is not allowed"),
        ({"learning_rate": 0}, r"train.learning_rate=0 must be > 0"),
        ({"weight_decay": -1.0}, r"train.weight_decay=-1.0 must be >= 0"),
        ({"epochs": 2.5}, r"train.epochs=2.5 must be an integer"),
        ({"seed": -1}, r"train.seed=-1 must be an integer in \[0, "),
        ({"seed": 2**31}, r"train.seed=2147483648 must be an integer in \[0, "),
        ({"jit_compile": "yes"}, r"train.jit_compile='yes' must be true or false"),
    ],
)
def test_train_config_errors_name_the_field_and_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_numpy_integers_are_accepted_as_shapes():
    cfg = ModelConfig(feature_shape=[np.int64(28), np.int64(28)], hidden_sizes=[np.int32(5)])
    assert (
        cfg.feature_shape == (28, 28) and cfg.input_dim == 784 and type(cfg.hidden_sizes[0]) is int
    )


def test_model_config_dict_round_trip_and_unknown_keys():
    cfg = ModelConfig(feature_shape=(28, 28), hidden_sizes=(400, 200), likelihood="gaussian")
    data = to_dict(cfg)
    assert data["feature_shape"] == [28, 28]
    assert model_config_from_dict(data) == cfg
    with pytest.raises(ConfigError, match=r"unknown model config keys \['width'\]; valid keys"):
        model_config_from_dict({**data, "width": 3})


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(
        ConfigError,
        match=r"preset='fancy' is not allowed; choose one of 'default', 'paper', 'fast'",
    ):
        preset_overrides("fancy")


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3  # type: ignore[misc]
