"""Pipeline configuration: frozen sections, one loader (TOML file, then `key=value` overrides).

    preset = "default"            # or "paper" (Kingma & Welling Sec. 5), applied before the file
    [data]      source, name, data_root, split_seed, valid_fraction, test_fraction
    [model]     latent_dim, hidden_sizes, activation, likelihood, init
    [train]     epochs, batch_size, optimizer, learning_rate, weight_decay, estimator, num_samples, ...
    [evaluate]  num_samples (K), batch_size, seed, split
    [register]  model_name
    [export]    splits, batch_size
    [pipeline]  retrain_on_unchanged, lock_timeout_seconds, retries, retry_delay_seconds,
                task_runner ("threads" | "dask"), dask_address, workers,
                schedule_collisions ("cancel_new" | "enqueue")

Unknown sections or keys are errors that list the valid ones. The resolved config is logged to
MLflow as params. `parse_reproduce_overrides` reads the `aevb reproduce` KEY=VALUE settings (typed
fields of `tasks.reproduce.settings.ReproduceSettings`, tuples as comma lists).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

from models import constants as C
from models.config import ModelConfig, TrainConfig, preset_overrides
from models.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# Collision strategies of the scheduled deployment's 1-run concurrency limit (flows/serve.py).
SCHEDULE_COLLISIONS = ("cancel_new", "enqueue")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")


@dataclass(frozen=True)
class DataSection:
    source: str = "digits"
    name: str | None = None  # defaults to the source name for built-ins
    data_root: str | None = None
    split_seed: int = 0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # Files read as ONE dataset, one task per shard on the pipeline's task runner (Dask fan-out);
    # when given, `source` is ignored and `name` is required.
    shards: tuple[str, ...] = ()
    # Prefix each row id with its shard's file name ("part-1.csv/17"), so per-file row numbers
    # cannot collide; set false when the shards carry ids that are unique across files.
    prefix_shard_ids: bool = True
    # Reader options of `aevb ingest` as a table, e.g. {id_column = "id", label_column = "y"}.
    options: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.shards, str) or not isinstance(self.shards, (list, tuple)):
            raise ConfigError(
                f'data.shards={self.shards!r} must be a list of files, e.g. ["a.csv"]'
            )
        object.__setattr__(self, "shards", tuple(self.shards))
        if any(not isinstance(f, str) or not f.strip() for f in self.shards):
            raise ConfigError(f"data.shards={list(self.shards)!r} must hold file paths (strings)")
        if not isinstance(self.prefix_shard_ids, bool):
            raise ConfigError(
                f"data.prefix_shard_ids={self.prefix_shard_ids!r} must be true or false"
            )
        if not isinstance(self.options, dict) or any(
            not isinstance(k, str) or isinstance(v, dict) for k, v in self.options.items()
        ):
            raise ConfigError(
                f"data.options={self.options!r} must be a table of reader options, e.g. "
                '{id_column = "id", label_column = "label"} (see `aevb ingest --help`)'
            )
        if self.shards and self.name is None:
            raise ConfigError("data.shards needs data.name: the dataset the shards become")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(
                f"data.source={self.source!r} must be a built-in name, file or folder"
            )
        if self.name is not None:
            from models.errors import DatasetError
            from tasks.store.datasets import validate_name

            try:
                validate_name(self.name)
            except DatasetError as exc:
                raise ConfigError(f"data.name: {exc}") from exc
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"data.data_root={self.data_root!r} must be a path or URI string")
        _check_int("data.split_seed", self.split_seed, 0)
        for f in ("valid_fraction", "test_fraction"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"data.{f}={v!r} must be a number in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("data.valid_fraction + data.test_fraction must be < 1")

    @property
    def dataset_name(self) -> str:
        from tasks.ingest import default_name

        return self.name or default_name(self.source)


@dataclass(frozen=True)
class EvaluateSection:
    num_samples: int = 5000
    batch_size: int = 500
    seed: int = 0
    split: str = C.TEST

    def __post_init__(self) -> None:
        _check_int("evaluate.num_samples", self.num_samples, 1)
        _check_int("evaluate.batch_size", self.batch_size, 1)
        _check_int("evaluate.seed", self.seed, 0)
        if self.split not in C.SPLITS:
            raise ConfigError(f"evaluate.split={self.split!r}; choose one of {', '.join(C.SPLITS)}")


@dataclass(frozen=True)
class RegisterSection:
    model_name: str | None = None  # default: aevb-<dataset>

    def __post_init__(self) -> None:
        if self.model_name is not None and (
            not isinstance(self.model_name, str) or not _MODEL_NAME.fullmatch(self.model_name)
        ):
            raise ConfigError(
                f"register.model_name={self.model_name!r}: use 1-100 characters from letters, "
                "digits, '.', '_', '-', starting with a letter or digit"
            )


@dataclass(frozen=True)
class ExportSection:
    splits: tuple[str, ...] = C.SPLITS
    batch_size: int = 2000

    def __post_init__(self) -> None:
        _check_int("export.batch_size", self.batch_size, 1)
        if isinstance(self.splits, str) or not isinstance(self.splits, (list, tuple)):
            raise ConfigError(f'export.splits={self.splits!r} must be a list, e.g. ["test"]')
        object.__setattr__(self, "splits", tuple(self.splits))
        bad = [s for s in self.splits if s not in C.SPLITS]
        if bad or not self.splits:
            raise ConfigError(
                f"export.splits={list(self.splits)!r}; choose from {', '.join(C.SPLITS)}"
            )


@dataclass(frozen=True)
class PipelineSection:
    """Orchestration: retraining semantics, the per-model retrain lock, retries, task runner."""

    # Unchanged dataset version and config -> the run is skipped (nothing new to learn); true ->
    # retrain from scratch anyway (a new MLflow run and model version, gated like any other).
    retrain_on_unchanged: bool = False
    # A second retrain of the same registered model waits this long for the first, then fails.
    lock_timeout_seconds: float = 6 * 3600.0
    # Retries of a stage after a transient I/O error (tracking server, object store); never
    # after a PipelineError or any other deterministic failure.
    retries: int = 3
    retry_delay_seconds: float = 10.0
    task_runner: str = "threads"
    dask_address: str = ""  # empty: a local in-process Dask cluster when task_runner = "dask"
    workers: int = 0  # threads (or local Dask threads); 0 = the runner's default
    # What the scheduled deployment (`aevb serve`, `aevb deploy`) does with a run that is due
    # while another run of it is still going: "cancel_new" (the new run is cancelled at once)
    # or "enqueue" (it waits for the slot). Either way at most one run executes at a time.
    schedule_collisions: str = "cancel_new"

    def __post_init__(self) -> None:
        from tasks.runners import check_runner

        if not isinstance(self.retrain_on_unchanged, bool):
            raise ConfigError(
                f"pipeline.retrain_on_unchanged={self.retrain_on_unchanged!r} must be true or false"
            )
        for f, low in (("lock_timeout_seconds", 1.0), ("retry_delay_seconds", 0.0)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
                raise ConfigError(f"pipeline.{f}={v!r} must be a number >= {low:g}")
        _check_int("pipeline.retries", self.retries, 0)
        _check_int("pipeline.workers", self.workers, 0)
        if not isinstance(self.dask_address, str):
            raise ConfigError(f"pipeline.dask_address={self.dask_address!r} must be a string")
        check_runner(self.task_runner, self.dask_address or None, self.workers or None)
        if self.schedule_collisions not in SCHEDULE_COLLISIONS:
            raise ConfigError(
                f"pipeline.schedule_collisions={self.schedule_collisions!r} is not allowed; "
                f"choose one of {', '.join(map(repr, SCHEDULE_COLLISIONS))}"
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
    pipeline: PipelineSection = field(default_factory=PipelineSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "data": DataSection,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateSection,
    "register": RegisterSection,
    "export": ExportSection,
    "pipeline": PipelineSection,
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
    return section.strip(), key.strip(), _parse_value(raw)


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_config(
    path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Defaults <- preset <- TOML file <- `key=value` overrides, every field validated."""
    raw: dict[str, Any] = {}
    where = "the config"
    if path:
        where = f"--config {path}"
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"--config {path}: file not found") from exc
        except IsADirectoryError as exc:
            raise ConfigError(f"--config {path}: is a folder, expected a TOML file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML ({exc})") from exc
    for item in overrides:
        if item.split("=", 1)[0].strip() == "preset":
            raw["preset"] = _parse_value(item.split("=", 1)[1])
            continue
        section, key, value = parse_override(item)
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config section [{section}] must be a table of key = value")
        table[key] = value
    preset = raw.pop("preset", "default")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {unknown}; valid: preset, {', '.join(SECTIONS)}"
        )
    if not isinstance(preset, str):
        raise ConfigError(f"{where}: preset={preset!r} must be a string")
    base = preset_overrides(preset)
    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = dict(base.get(name, {}))
        given = raw.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: section [{name}] must be a table of key = value")
        bad = sorted(set(given) - set(valid_keys(name)))
        if bad:
            raise ConfigError(
                f"{where}: unknown key(s) {bad} in [{name}]; valid keys: {', '.join(valid_keys(name))}"
            )
        values.update(given)
        built[name] = cls(**values)
    return PipelineConfig(preset=preset, **built)


# ----------------------------------------------------------------------------- reproduce


def _reproduce_fields() -> dict[str, Any]:
    from tasks.reproduce.settings import ReproduceSettings

    hints = typing.get_type_hints(ReproduceSettings)
    return {f.name: hints[f.name] for f in dataclasses.fields(ReproduceSettings)}


def _convert_typed(key: str, text: str, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    try:
        if origin is tuple:
            item = args[0]
            parts = [t.strip() for t in text.strip("()[] ").split(",") if t.strip()]
            values = tuple(_convert_typed(key, t, item) for t in parts)
            if args[-1] is not Ellipsis and len(values) != len(args):
                raise ValueError(f"expected {len(args)} values")
            if not values:
                raise ValueError("empty list")
            return values
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text.replace("_", ""))
        if kind is float:
            return float(text)
        return text
    except ValueError as exc:
        raise ConfigError(f"reproduce override {key}={text!r}: {exc}") from exc


def parse_reproduce_overrides(items: list[str]) -> dict[str, Any]:
    """``["fig2_latents=3,20", ...]`` -> typed `ReproduceSettings` fields (ConfigError if unknown)."""
    types, out = _reproduce_fields(), {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in types or key in ("mode", "seed", "dataset"):
            settable = sorted(set(types) - {"mode", "seed", "dataset"})
            raise ConfigError(
                f"reproduce: unknown setting {item!r}; use --quick/--full, --seed, --dataset, or "
                f"one of {', '.join(settable)}"
            )
        out[key] = _convert_typed(key, value.strip(), types[key])
    for key, value in out.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"reproduce override {key}={value!r} must be > 0")
        if isinstance(value, tuple) and any(v <= 0 for v in value):
            raise ConfigError(f"reproduce override {key}={list(value)!r}: values must be > 0")
    return out
