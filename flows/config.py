"""Pipeline configuration: frozen sections, one loader (TOML file, then `key=value` overrides).

Sections data, model, train, evaluate, register, export, score, sample, pipeline (plus the top-level `preset`);
every key is documented in its class's "Keys:" docstring table, which `aevb config show` prints
with its type, default and allowed values (flows/config_docs.py).

Unknown sections or keys are errors that list the valid ones. The resolved config is logged to
MLflow as params. `aevb reproduce` settings are parsed in flows/config_reproduce.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from flows.config_sources import parse_override, parse_value, read_config_file
from models import constants as C
from models.config import (
    ModelConfig,
    SampleConfig,
    TrainConfig,
    check_binarize,
    preset_overrides,
)
from models.errors import ConfigError

# Collision strategies of the scheduled deployment's 1-run concurrency limit (flows/serve.py).
SCHEDULE_COLLISIONS = ("cancel_new", "enqueue")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")


def _check_float(name: str, value: Any, low: float) -> None:
    """A finite number >= ``low`` (NaN and infinity are refused: they pass every comparison)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (isinstance(value, float) and not math.isfinite(value)) or value < low:
        raise ConfigError(f"{name}={value!r} must be a finite number >= {low:g}")


@dataclass(frozen=True)
class DataSection:
    """What to ingest and how to split it.

    Keys (`aevb config show` prints them; a test checks every field has a line):
        source: built-in name (digits, mnist-5k, fashion-mnist), or a file or folder (IDX, CSV,
            NPZ, images, Parquet)
        name: dataset name; unset = derived from the source {[a-z0-9][a-z0-9._-]{0,63}}
        data_root: data root folder or URI such as s3://bucket/prefix; unset = $AEVB_DATA_ROOT,
            else the default location (README "Where data and stores go")
        split_seed: seed of the train/valid/test split {>= 0}
        valid_fraction: share of rows for validation {[0, 1)}
        test_fraction: share of rows for test (IDX t10k files are the test split) {[0, 1)}
        shards: files read as ONE dataset, one task per file on the task runner; when given,
            source is ignored and name is required
        prefix_shard_ids: prefix each row id with its shard's file name ("part-1.csv/17") so
            per-file row numbers cannot collide; false when ids are unique across files
        options: reader options of `aevb ingest` as a table, e.g. {id_column = "id"} (see its --help)
    """

    source: str = "digits"
    name: str | None = None
    data_root: str | None = None
    split_seed: int = 0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    shards: tuple[str, ...] = ()
    prefix_shard_ids: bool = True
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
        if self.options:  # (the readers' module imports numpy: not for an empty table)
            from tasks.sources import check_options

            check_options(self.options, "data.options.")
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
    """The pipeline's held-out log p(x) (importance sampling), which also feeds the gate.

    Keys:
        num_samples: K importance samples per point (the IWAE protocol uses 5000) {>= 1}
        batch_size: points per estimator call {>= 1}
        seed: seed of the importance samples {>= 0}
        split: the split scored (and compared with the champion's score)
    """

    num_samples: int = 5000
    batch_size: int = 500
    seed: int = 0
    split: Literal["train", "valid", "test"] = C.TEST

    def __post_init__(self) -> None:
        _check_int("evaluate.num_samples", self.num_samples, 1)
        _check_int("evaluate.batch_size", self.batch_size, 1)
        _check_int("evaluate.seed", self.seed, 0)
        if self.split not in C.SPLITS:
            raise ConfigError(f"evaluate.split={self.split!r}; choose one of {', '.join(C.SPLITS)}")


@dataclass(frozen=True)
class RegisterSection:
    """The MLflow registry entry.

    Keys:
        model_name: registered model name; unset = aevb-<dataset> {1-100 of A-Z a-z 0-9 . _ -}
    """

    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.model_name is not None and (
            not isinstance(self.model_name, str) or not _MODEL_NAME.fullmatch(self.model_name)
        ):
            raise ConfigError(
                f"register.model_name={self.model_name!r}: use 1-100 characters from letters, "
                "digits, '.', '_', '-', starting with a letter or digit"
            )


def _check_splits(section: str, splits: Any) -> tuple[str, ...]:
    if isinstance(splits, str) or not isinstance(splits, (list, tuple)):
        raise ConfigError(f'{section}.splits={splits!r} must be a list, e.g. ["test"]')
    bad = [s for s in splits if s not in C.SPLITS]
    if bad or not splits:
        raise ConfigError(f"{section}.splits={list(splits)!r}; choose from {', '.join(C.SPLITS)}")
    return tuple(splits)


@dataclass(frozen=True)
class ExportSection:
    """The latent feature table written with the champion.

    Keys:
        splits: splits encoded into the latent table
        batch_size: rows per encoder call {>= 1}
        log_px_samples: K > 0 adds a `log_px` column, log p(x) by importance sampling with K
            samples (K decoder passes per row); 0 = off {>= 0}
        elbo: write the per-row `elbo` anomaly score (one decoder pass per row); false = a table
            of codes only (id, split, label, z_mean_*, z_std_*), ~1.7x faster to export
    """

    splits: tuple[Literal["train", "valid", "test"], ...] = C.SPLITS
    batch_size: int = 2000
    log_px_samples: int = 0
    elbo: bool = True

    def __post_init__(self) -> None:
        _check_int("export.batch_size", self.batch_size, 1)
        object.__setattr__(self, "splits", _check_splits("export", self.splits))
        _check_int("export.log_px_samples", self.log_px_samples, 0)
        if not isinstance(self.elbo, bool):
            raise ConfigError(f"export.elbo={self.elbo!r} must be true or false")


@dataclass(frozen=True)
class ScoreSection:
    """`aevb score`: the latent table with anomaly scores for any dataset version.

    Keys:
        splits: splits scored
        batch_size: rows per model call {>= 1}
        log_px_samples: K importance samples per row for `log_px`; 0 = the `elbo` column only {>= 0}
        seed: seed of the scores' noise {>= 0}
    """

    splits: tuple[str, ...] = C.SPLITS
    batch_size: int = 2000
    log_px_samples: int = 1000  # 0: the elbo column only
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("score.batch_size", self.batch_size, 1)
        object.__setattr__(self, "splits", _check_splits("score", self.splits))
        _check_int("score.log_px_samples", self.log_px_samples, 0)
        _check_int("score.seed", self.seed, 0)


@dataclass(frozen=True)
class PipelineSection:
    """Orchestration: retraining semantics, the per-model retrain lock, retries, task runner.

    Keys:
        retrain_on_unchanged: false = an unchanged dataset version and config skips the run;
            true = retrain anyway (a new MLflow run and model version, gated like any other)
        lock_timeout_seconds: a second retrain of the same model waits this long, then fails {>= 1}
        retries: retries of a stage after a transient I/O error (tracking server, object store;
            never after a user error) {>= 0}
        retry_delay_seconds: wait before the first retry {>= 0}
        task_runner: where stages and fan-out tasks run: threads here, or a Dask cluster
        dask_address: Dask scheduler, e.g. tcp://10.0.0.5:8786; empty = a local cluster
        workers: threads (or local Dask workers); 0 = the runner's default {>= 0}
        schedule_collisions: what the scheduled deployment (`aevb serve`, `aevb deploy`) does
            with a run that is due while another still runs: cancel_new = the new run is
            cancelled at once, enqueue = it waits; either way one run at a time
        drift_samples: K importance samples per row when the champion is scored on a new
            dataset version's evaluate.split before retraining (the drift, logged to the new run
            and printed); 0 = no drift measured {>= 0}
        drift_nats: refuse to retrain (one line, exit 2, nothing trained or registered) when the
            champion's log p(x) moved by more than this many nats per row between its own
            dataset version and the new one, either way; 0 = off {>= 0}
    """

    retrain_on_unchanged: bool = False
    lock_timeout_seconds: float = 6 * 3600.0
    retries: int = 3
    retry_delay_seconds: float = 10.0
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str = ""
    workers: int = 0
    schedule_collisions: Literal["cancel_new", "enqueue"] = "cancel_new"
    drift_samples: int = 100
    drift_nats: float = 0.0

    def __post_init__(self) -> None:
        from tasks.runners import check_runner

        if not isinstance(self.retrain_on_unchanged, bool):
            raise ConfigError(
                f"pipeline.retrain_on_unchanged={self.retrain_on_unchanged!r} must be true or false"
            )
        for f, low in (("lock_timeout_seconds", 1.0), ("retry_delay_seconds", 0.0)):
            _check_float(f"pipeline.{f}", getattr(self, f), low)
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
        _check_int("pipeline.drift_samples", self.drift_samples, 0)
        _check_float("pipeline.drift_nats", self.drift_nats, 0.0)
        if self.drift_nats > 0 and self.drift_samples == 0:
            raise ConfigError(
                f"pipeline.drift_nats={self.drift_nats:g} needs the drift measured: set "
                "pipeline.drift_samples > 0 (e.g. 100) or pipeline.drift_nats=0"
            )


@dataclass(frozen=True)
class PipelineConfig:
    """Every section, and the preset applied before the file and the overrides.

    Keys:
        preset: named defaults applied first: default (modern), paper (Kingma & Welling Sec. 5),
            fast (batch 1000)
    """

    preset: Literal["default", "paper", "fast"] = "default"
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    register: RegisterSection = field(default_factory=RegisterSection)
    export: ExportSection = field(default_factory=ExportSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        check_binarize(self.train.binarize, self.model.likelihood)

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
    "score": ScoreSection,
    "sample": SampleConfig,
}
# feature_shape comes from the dataset manifest, never from the user.
_HIDDEN = {"model": {"feature_shape"}}


def valid_keys(section: str) -> list[str]:
    return sorted(
        f.name
        for f in dataclasses.fields(SECTIONS[section])
        if f.name not in _HIDDEN.get(section, set())
    )


def load_config(
    path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Defaults <- preset <- TOML file <- `key=value` overrides, every field validated."""
    raw: dict[str, Any] = read_config_file(path) if path else {}
    where = f"--config {path}" if path else "the config"
    for item in overrides:
        if item.split("=", 1)[0].strip() == "preset":
            raw["preset"] = parse_value(item.split("=", 1)[1])
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
