"""Frozen, validated configuration for the model and its training.

Defaults live here, so a default run needs no file. Construction validates every field and names
the field, the value and what is allowed. Presets (`PRESETS`, applied on top of the defaults):

- ``default``: ReLU MLP (500 hidden), Glorot init, Adam 1e-3, batch 100, estimator B, L=1,
  early stopping (patience 5), XLA-compiled step.
- ``paper``: Kingma & Welling (2013) Sec. 5: tanh, 500 hidden units, M=100, L=1, estimator B,
  Adagrad with step size 0.02 (from the paper's grid {0.01, 0.02, 0.1}), weight decay 1 (the
  N(0, I) prior on theta of the paper's approximate MAP) and N(0, 0.01) initialisation.
- ``fast``: the default model with batch 1000 and Adam 3e-3 for throughput (XLA step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from models.constants import EVAL_SEED_OFFSET
from models.errors import ConfigError

Likelihood = Literal["bernoulli", "gaussian", "continuous_bernoulli"]
Activation = Literal["tanh", "relu", "softplus", "elu"]
Init = Literal["glorot", "paper"]
Estimator = Literal["A", "B", "iwae"]
Optimizer = Literal["adam", "adagrad"]
Preset = Literal["default", "paper", "fast"]
Theta = Literal["map", "full_vb"]  # point estimate of the decoder, or App. F's q(theta)
# Data-parallel training (models/distributed.py): none, local devices, or a TF_CONFIG cluster.
Strategy = Literal["default", "mirrored", "multi_worker"]
# Seeds are int32 stateless-RNG keys; validation seeds are train.seed + EVAL_SEED_OFFSET.
EVAL_SEED_ROOM = 10_000
assert EVAL_SEED_OFFSET < EVAL_SEED_ROOM


def _check_choice(name: str, value: Any, allowed_type: Any) -> None:
    allowed = get_args(allowed_type)
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
        )


def _check_positive(
    name: str, value: float, *, integer: bool = False, allow_zero: bool = False
) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and hasattr(value, "__index__")  # int or numpy integer


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of q(z|x) and p(x|z). ``feature_shape`` comes from the dataset manifest."""

    feature_shape: tuple[int, ...] = (64,)
    latent_dim: int = 20
    hidden_sizes: tuple[int, ...] = (500,)
    activation: Activation = "relu"
    likelihood: Likelihood = "bernoulli"
    init: Init = "glorot"

    def __post_init__(self) -> None:
        for name in ("feature_shape", "hidden_sizes"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
                raise ConfigError(f"model.{name}={value!r} must be a list of positive integers")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if not self.feature_shape or any(d <= 0 for d in self.feature_shape):
            raise ConfigError(
                f"model.feature_shape={self.feature_shape!r} must be non-empty positive ints"
            )
        _check_positive("model.latent_dim", self.latent_dim, integer=True)
        if any(h <= 0 for h in self.hidden_sizes):
            raise ConfigError(f"model.hidden_sizes={self.hidden_sizes!r} must be positive ints")
        _check_choice("model.activation", self.activation, Activation)
        _check_choice("model.likelihood", self.likelihood, Likelihood)
        _check_choice("model.init", self.init, Init)

    @property
    def input_dim(self) -> int:
        d = 1
        for s in self.feature_shape:
            d *= s
        return d


@dataclass(frozen=True)
class TrainConfig:
    """SGVB optimisation settings. ``num_samples`` is L (estimators A/B) or k (iwae)."""

    epochs: int = 20
    batch_size: int = 100
    optimizer: Optimizer = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    estimator: Estimator = "B"
    num_samples: int = 1
    patience: int = 5
    seed: int = 0
    jit_compile: bool = True
    theta: Theta = "map"  # "full_vb": factorized Gaussian q(theta) over the decoder (App. F)
    # "mirrored": all local GPUs (one replica per device); "multi_worker": the machines named by
    # the TF_CONFIG environment variable, each started with the same config (models/distributed.py)
    strategy: Strategy = "default"

    def __post_init__(self) -> None:
        _check_positive("train.epochs", self.epochs, integer=True)
        _check_positive("train.batch_size", self.batch_size, integer=True)
        _check_choice("train.optimizer", self.optimizer, Optimizer)
        _check_positive("train.learning_rate", self.learning_rate)
        _check_positive("train.weight_decay", self.weight_decay, allow_zero=True)
        _check_choice("train.estimator", self.estimator, Estimator)
        _check_positive("train.num_samples", self.num_samples, integer=True)
        _check_positive("train.patience", self.patience, integer=True, allow_zero=True)
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < 2**31 - EVAL_SEED_ROOM
        ):
            raise ConfigError(
                f"train.seed={self.seed!r} must be an integer in [0, {2**31 - EVAL_SEED_ROOM})"
            )
        if not isinstance(self.jit_compile, bool):
            raise ConfigError(f"train.jit_compile={self.jit_compile!r} must be true or false")
        _check_choice("train.theta", self.theta, Theta)
        if self.theta == "full_vb" and self.estimator != "B":
            raise ConfigError(
                f"train.theta='full_vb' uses estimator B; train.estimator={self.estimator!r} is "
                "not supported with it: set train.estimator='B' or train.theta='map'"
            )
        _check_choice("train.strategy", self.strategy, Strategy)
        if self.strategy != "default" and self.theta != "map":
            raise ConfigError(
                f"train.strategy={self.strategy!r} trains train.theta='map' only; "
                f"train.theta={self.theta!r} needs train.strategy='default'"
            )


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"model": {}, "train": {}},
    "paper": {
        "model": {"hidden_sizes": (500,), "activation": "tanh", "init": "paper"},
        "train": {
            "batch_size": 100,
            "num_samples": 1,
            "optimizer": "adagrad",
            "learning_rate": 0.02,
            "weight_decay": 1.0,
            "estimator": "B",
        },
    },
    "fast": {
        "model": {},
        "train": {"batch_size": 1000, "learning_rate": 3e-3, "jit_compile": True},
    },
}


def preset_overrides(preset: str) -> dict[str, dict[str, Any]]:
    """The field overrides a preset applies on top of the dataclass defaults."""
    if preset not in PRESETS:
        raise ConfigError(
            f"preset={preset!r} is not allowed; choose one of {', '.join(map(repr, PRESETS))}"
        )
    return PRESETS[preset]


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


__all__ = [
    "ModelConfig",
    "TrainConfig",
    "PRESETS",
    "preset_overrides",
    "to_dict",
    "model_config_from_dict",
]
