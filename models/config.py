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
import math
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
Architecture = Literal["mlp", "conv"]  # conv: strided convolutions, for 2-D / 3-D feature shapes
# Fields that only a conv model uses. `to_dict` leaves them (and `architecture`) out of an MLP's
# dict, so an MLP's config.json, run key and checkpoint fingerprint stay as they were before conv
# models existed; a dict without `architecture` therefore means "mlp", which must stay the default.
CONV_FIELDS = ("architecture", "conv_channels", "conv_kernel_size")
# The Gaussian decoder's std floor: exp(-6) is where the log-variance clip sat before it was a
# setting. `to_dict` leaves min_std at this default (and train.binarize at "none") out of the dict,
# so existing config.json files, run keys and checkpoint fingerprints stay as they were.
DEFAULT_MIN_STD = math.exp(-6.0)
MAX_MIN_STD = math.exp(4.0)  # the log-variance ceiling's std (models/vae.py LOG_VAR_MAX = 8)
Binarize = Literal["none", "dynamic"]  # models/discrete.py
# models/precision.py: bfloat16 matmuls (float32 everything else) where the hardware has them.
Precision = Literal["float32", "mixed_bfloat16"]
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
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number (not NaN or infinity)")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and hasattr(value, "__index__")  # int or numpy integer


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of q(z|x) and p(x|z). ``feature_shape`` comes from the dataset manifest.

    Keys (`aevb config show` prints them; a test checks every field has a line):
        feature_shape: shape of one example, taken from the dataset manifest (not settable)
        latent_dim: size of z, the latent code of every row {>= 1}
        hidden_sizes: hidden layer widths of the encoder MLP; the decoder mirrors them {ints >= 1}
        activation: nonlinearity of the hidden layers (the paper uses tanh)
        likelihood: decoder p(x|z): Bernoulli (binary or [0, 1] data), Gaussian with learned
            variance (continuous data), or continuous Bernoulli
        init: weight initialisation: Glorot, or the paper's N(0, 0.01) for every weight
        architecture: mlp (dense layers, the paper's) or conv (images only, see below)
        conv_channels: conv: channels of each stride-2 convolution of the encoder {ints >= 1}
        conv_kernel_size: conv: side of the square kernels {>= 1}
        min_std: gaussian: floor of the decoder's learned std (a warning says when most pixels
            sit on it) {finite, 0 < min_std < 54.6}

    ``architecture="conv"``: the encoder is ``len(conv_channels)`` stride-2 convolutions
    (``conv_kernel_size`` square kernels) then dense ``hidden_sizes`` to the Gaussian heads; the
    decoder mirrors it (dense layers, then stride-2 transposed convolutions). Images only: the
    dataset's feature_shape must be (H, W) or (H, W, C) (`check_architecture`).
    """

    feature_shape: tuple[int, ...] = (64,)
    latent_dim: int = 20
    hidden_sizes: tuple[int, ...] = (500,)
    activation: Activation = "relu"
    likelihood: Likelihood = "bernoulli"
    init: Init = "glorot"
    architecture: Architecture = "mlp"
    conv_channels: tuple[int, ...] = (32, 64)
    conv_kernel_size: int = 3
    min_std: float = DEFAULT_MIN_STD

    def __post_init__(self) -> None:
        for name in ("feature_shape", "hidden_sizes", "conv_channels"):
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
        _check_choice("model.architecture", self.architecture, Architecture)
        if not self.conv_channels or any(c <= 0 for c in self.conv_channels):
            raise ConfigError(
                f"model.conv_channels={list(self.conv_channels)!r} must be a non-empty list of "
                "positive integers (channels of each stride-2 convolution), e.g. [32, 64]"
            )
        _check_positive("model.conv_kernel_size", self.conv_kernel_size, integer=True)
        _check_positive("model.min_std", self.min_std)
        object.__setattr__(self, "min_std", float(self.min_std))
        if not self.min_std < MAX_MIN_STD:
            raise ConfigError(
                f"model.min_std={self.min_std!r} must be < {MAX_MIN_STD:.4g} (the largest std the "
                f"decoder can output); the default is {DEFAULT_MIN_STD:.6g}"
            )

    @property
    def input_dim(self) -> int:
        d = 1
        for s in self.feature_shape:
            d *= s
        return d


def check_architecture(model: ModelConfig, theta: str = "map", dataset: str = "") -> None:
    """Refuse a conv model for data that are not images, and full VB over a conv decoder."""
    if model.architecture != "conv":
        return
    shape = model.feature_shape
    if len(shape) not in (2, 3):
        where = f"dataset {dataset} has" if dataset else "the data have"
        raise ConfigError(
            f"model.architecture='conv' needs images, but {where} feature_shape "
            f"{list(shape)} ({len(shape)}-D); use model.architecture='mlp', or ingest the data "
            "with their (H, W) or (H, W, C) shape"
        )
    if theta == "full_vb":
        raise ConfigError(
            "train.theta='full_vb' supports model.architecture='mlp' only; set "
            "model.architecture='mlp' or train.theta='map'"
        )


def check_binarize(binarize: str, likelihood: str) -> None:
    """Refuse train.binarize='dynamic' for a decoder that is not Bernoulli."""
    if binarize != "none" and likelihood != "bernoulli":
        raise ConfigError(
            f"train.binarize={binarize!r} needs model.likelihood='bernoulli' (got {likelihood!r}): "
            "set train.binarize='none' (continuous likelihoods are dequantized instead)"
        )


@dataclass(frozen=True)
class TrainConfig:
    """SGVB optimisation settings. ``num_samples`` is L (estimators A/B) or k (iwae).

    Keys:
        epochs: passes over the training split; early stopping (patience) may end sooner {>= 1}
        batch_size: minibatch size M {>= 1}
        optimizer: optimiser of encoder and decoder weights (the paper uses Adagrad)
        learning_rate: step size of the optimiser {> 0}
        weight_decay: w of a N(0, I/w) prior on the decoder weights (1 = the paper's MAP) {>= 0}
        estimator: A = Monte Carlo KL, B = analytic KL (the paper's choice), iwae =
            importance-weighted bound
        num_samples: z samples per example: L for estimators A/B, k for iwae {>= 1}
        patience: stop after this many epochs without a better validation ELBO; 0 = never {>= 0}
        seed: seed of initialisation, shuffling and noise {0 <= seed < 2147473648}
        jit_compile: compile the training step with XLA (faster; false helps debugging)
        theta: map = point estimate of the decoder; full_vb = factorised Gaussian q(theta)
            (the paper's App. F; needs estimator B)
        precision: float32, or mixed_bfloat16 = dense matmuls in bfloat16 (fast on CPUs with
            AVX-512 BF16/AMX and on GPUs); weights, optimiser state and checkpoints stay float32
        strategy: default = one device; mirrored = every local GPU (one replica each);
            multi_worker = the machines named by TF_CONFIG, each started with the same config
        binarize: bernoulli only: none = train on the stored intensities; dynamic = a fresh
            x ~ Bernoulli(intensity) each epoch, evaluated on one fixed binarization (IWAE protocol)
    """

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
    theta: Theta = "map"
    precision: Precision = "float32"  # "mixed_bfloat16": bf16 matmuls (models/precision.py)
    # "mirrored": all local GPUs (one replica per device); "multi_worker": the machines named by
    # the TF_CONFIG environment variable, each started with the same config (models/distributed.py)
    strategy: Strategy = "default"
    binarize: Binarize = "none"  # "dynamic": Bernoulli decoder only (models/discrete.py)

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
        _check_choice("train.precision", self.precision, Precision)
        if self.theta == "full_vb" and self.precision != "float32":
            raise ConfigError(
                f"train.precision={self.precision!r} is not supported with train.theta='full_vb'; "
                "set train.precision='float32'"
            )
        if self.theta == "full_vb" and self.estimator != "B":
            raise ConfigError(
                f"train.theta='full_vb' uses estimator B; train.estimator={self.estimator!r} is "
                "not supported with it: set train.estimator='B' or train.theta='map'"
            )
        _check_choice("train.strategy", self.strategy, Strategy)
        _check_choice("train.binarize", self.binarize, Binarize)
        if self.strategy != "default" and self.theta != "map":
            raise ConfigError(
                f"train.strategy={self.strategy!r} trains train.theta='map' only; "
                f"train.theta={self.theta!r} needs train.strategy='default'"
            )


@dataclass(frozen=True)
class SampleConfig:
    """Generation from a trained model (`aevb sample`): z ~ p(z), then E[x|z] and x ~ p(x|z).

    Keys:
        num_samples: how many z to draw {[1, 100000]}
        seed: seed of z and of the draws {[0, 2**31 - 1]}
        draws: also x ~ p(x|z) (column x_draw, grid_draws.png), besides the means E[x|z]
        manifold_size: side of the manifold picture of a 2-D latent space (Fig. 4) {[2, 50]}
    """

    num_samples: int = 64
    seed: int = 0
    draws: bool = False  # also x ~ p(x|z), besides the decoder means E[x|z]
    manifold_size: int = 20  # a 2-D latent space also gets an n x n manifold picture (Fig. 4)

    def __post_init__(self) -> None:
        for name, low, high in (
            ("num_samples", 1, MAX_GENERATED),
            ("seed", 0, 2**31 - 1),
            ("manifold_size", 2, MAX_MANIFOLD),
        ):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= high:
                raise ConfigError(
                    f"sample.{name}={value!r} must be an integer in [{low}, {high:,}]"
                )
        if not isinstance(self.draws, bool):
            raise ConfigError(f"sample.draws={self.draws!r} must be true or false")


MAX_GENERATED = 100_000  # rows per `aevb sample` run
MAX_MANIFOLD = 50  # side of the manifold grid


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
    """A JSON-ready dict of a config dataclass (tuples become lists); an MLP's without CONV_FIELDS."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    if isinstance(config, ModelConfig) and config.architecture == "mlp":
        for name in CONV_FIELDS:
            out.pop(name)
    if isinstance(config, ModelConfig) and config.min_std == DEFAULT_MIN_STD:
        out.pop("min_std")
    if isinstance(config, TrainConfig) and config.binarize == "none":
        out.pop("binarize")
    return out


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


__all__ = [
    "CONV_FIELDS",
    "DEFAULT_MIN_STD",
    "ModelConfig",
    "SampleConfig",
    "TrainConfig",
    "check_architecture",
    "check_binarize",
    "PRESETS",
    "preset_overrides",
    "to_dict",
    "model_config_from_dict",
]
