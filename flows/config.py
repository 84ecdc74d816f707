"""Pipeline configuration: frozen sections, one loader (TOML file, then `key=value` overrides).

    preset = "default"            # or "paper" (Kingma & Welling Sec. 5), applied before the file
    [data]      source, name, data_root, split_seed, valid_fraction, test_fraction
    [model]     latent_dim, hidden_sizes, activation, likelihood, init
    [train]     epochs, batch_size, optimizer, learning_rate, weight_decay, estimator, num_samples, ...
    [evaluate]  num_samples (K), batch_size, seed, split
    [register]  model_name
    [export]    splits, batch_size

Unknown sections or keys are errors that list the valid ones. The resolved config is logged to
MLflow as params.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

from models import constants as C
from models.config import ModelConfig, TrainConfig, preset_overrides
from models.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DataSection:
    source: str = "digits"
    name: str | None = None  # defaults to the source name for built-ins
    data_root: str | None = None
    split_seed: int = 0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        for f in ("valid_fraction", "test_fraction"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"data.{f}={v!r} must be a number in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("data.valid_fraction + data.test_fraction must be < 1")

    @property
    def dataset_name(self) -> str:
        return self.name or self.source.replace("_", "-").lower()


@dataclass(frozen=True)
class EvaluateSection:
    num_samples: int = 5000
    batch_size: int = 500
    seed: int = 0
    split: str = C.TEST

    def __post_init__(self) -> None:
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ConfigError(f"evaluate.num_samples={self.num_samples!r} must be an integer >= 1")
        if self.split not in C.SPLITS:
            raise ConfigError(f"evaluate.split={self.split!r}; choose one of {', '.join(C.SPLITS)}")


@dataclass(frozen=True)
class RegisterSection:
    model_name: str | None = None


@dataclass(frozen=True)
class ExportSection:
    splits: tuple[str, ...] = C.SPLITS
    batch_size: int = 2000

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        bad = [s for s in self.splits if s not in C.SPLITS]
        if bad or not self.splits:
            raise ConfigError(
                f"export.splits={list(self.splits)!r}; choose from {', '.join(C.SPLITS)}"
            )


@dataclass(frozen=True)
class PipelineConfig:
    preset: str = "default"
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    register: RegisterSection = field(default_factory=RegisterSection)
    export: ExportSection = field(default_factory=ExportSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "data": DataSection,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateSection,
    "register": RegisterSection,
    "export": ExportSection,
}
# feature_shape comes from the dataset manifest, never from the user.
_HIDDEN = {"model": {"feature_shape"}}


def valid_keys(section: str) -> list[str]:
    return sorted(
        f.name
        for f in dataclasses.fields(SECTIONS[section])
        if f.name not in _HIDDEN.get(section, set())
    )


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value); the value is parsed as TOML, else kept a string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(
            f"override {item!r} must look like section.key=value, e.g. train.epochs=5"
        )
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load_config(
    path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"--config {path}: file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML ({exc})") from exc
    for item in overrides:
        if item.startswith("preset="):
            raw["preset"] = item.split("=", 1)[1]
            continue
        section, key, value = parse_override(item)
        raw.setdefault(section, {})[key] = value
    preset = raw.pop("preset", "default")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {unknown}; valid: preset, {', '.join(SECTIONS)}"
        )
    base = preset_overrides(preset)
    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = dict(base.get(name, {}))
        given = raw.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"config section [{name}] must be a table of key = value")
        bad = sorted(set(given) - set(valid_keys(name)))
        if bad:
            raise ConfigError(
                f"unknown key(s) {bad} in [{name}]; valid keys: {', '.join(valid_keys(name))}"
            )
        values.update(given)
        try:
            built[name] = cls(**values)
        except TypeError as exc:
            raise ConfigError(f"[{name}]: {exc}") from exc
    return PipelineConfig(preset=preset, **built)
