"""Pipeline config (flows/config.py): defaults, presets, TOML file, key=value overrides, validation."""

from __future__ import annotations

import dataclasses

import pytest

from flows.config import SECTIONS, PipelineConfig, load_config, parse_override, valid_keys
from models.config import PRESETS, ModelConfig, TrainConfig
from models.errors import ConfigError


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return str(path)


def test_no_file_no_overrides_gives_the_dataclass_defaults():
    cfg = load_config()
    assert cfg == PipelineConfig()
    assert cfg.model == ModelConfig() and cfg.train == TrainConfig()
    assert cfg.pipeline.retrain_on_unchanged is False and cfg.pipeline.task_runner == "threads"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_applies_exactly_its_overrides(preset):
    cfg = load_config(overrides=[f"preset={preset}"])
    assert cfg.preset == preset
    for section, values in PRESETS[preset].items():
        built = getattr(cfg, section)
        default = SECTIONS[section]()
        for f in dataclasses.fields(built):
            want = values.get(f.name, getattr(default, f.name))
            want = tuple(want) if isinstance(want, list) else want
            assert getattr(built, f.name) == want, f"{preset}: {section}.{f.name}"


def test_paper_preset_is_the_papers_setup():
    cfg = load_config(overrides=["preset=paper"])
    assert cfg.train.optimizer == "adagrad" and cfg.train.batch_size == 100
    assert cfg.model.activation == "tanh" and cfg.model.hidden_sizes == (500,)


def test_file_then_overrides_precedence_over_preset(tmp_path):
    path = _write(
        tmp_path,
        'preset = "paper"\n[train]\nlearning_rate = 0.05\nepochs = 7\n'
        "[model]\nlatent_dim = 3\nhidden_sizes = [32, 16]\n[pipeline]\nretrain_on_unchanged = true\n",
    )
    cfg = load_config(path, ["train.epochs=2", "export.splits=['test']"])
    assert cfg.preset == "paper"
    assert cfg.train.learning_rate == 0.05  # file beats preset
    assert cfg.train.optimizer == "adagrad"  # preset beats default
    assert cfg.train.epochs == 2  # override beats file
    assert cfg.model.hidden_sizes == (32, 16) and cfg.model.latent_dim == 3
    assert cfg.export.splits == ("test",)
    assert cfg.pipeline.retrain_on_unchanged is True


def test_override_preset_beats_the_files_preset(tmp_path):
    path = _write(tmp_path, 'preset = "paper"\n')
    assert load_config(path, ['preset="fast"']).preset == "fast"
    assert load_config(path, ["preset=fast"]).train.batch_size == 1000


@pytest.mark.parametrize(
    "item, expected",
    [
        ("train.epochs=5", ("train", "epochs", 5)),
        ("train.learning_rate=3e-4", ("train", "learning_rate", 3e-4)),
        ("train.jit_compile=false", ("train", "jit_compile", False)),
        ("model.hidden_sizes=[64, 32]", ("model", "hidden_sizes", [64, 32])),
        ("data.source=digits", ("data", "source", "digits")),  # bare word: kept as a string
        ("data.data_root=/tmp/x y", ("data", "data_root", "/tmp/x y")),
        ('data.name="my-set"', ("data", "name", "my-set")),
        (" train.seed = 3", ("train", "seed", 3)),
    ],
)
def test_override_values_are_parsed_as_toml(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["epochs=5"], r"must look like section.key=value"),
        (["train.epochs"], r"must look like section.key=value"),
        (["training.epochs=5"], r"unknown section\(s\) \['training'\]; valid: preset, data"),
        (["train.epoch=5"], r"unknown key\(s\) \['epoch'\] in \[train\]; valid keys: .*epochs"),
        (["model.feature_shape=[8, 8]"], r"unknown key\(s\) \['feature_shape'\]"),
        (["preset=huge"], r"preset='huge' is not allowed; choose one of 'default', 'paper'"),
        (["train.epochs=0"], r"train.epochs=0 must be > 0"),
        (["train.epochs=two"], r"train.epochs='two' must be an integer"),
        (["model.likelihood=poisson"], r"model.likelihood='poisson' is not allowed"),
        (["data.valid_fraction=0.6", "data.test_fraction=0.5"], r"must be < 1"),
        (["data.name=Bad Name"], r"invalid dataset name 'Bad Name'"),
        (["data.split_seed=true"], r"data.split_seed=True must be an integer"),
        (["evaluate.num_samples=0"], r"evaluate.num_samples=0 must be an integer >= 1"),
        (["evaluate.split=holdout"], r"evaluate.split='holdout'; choose one of train, valid, test"),
        (["export.splits=['dev']"], r"export.splits=\['dev'\]; choose from"),
        (["export.splits=test"], r"export.splits='test' must be a list"),
        (["register.model_name=a b"], r"register.model_name='a b'"),
        (["pipeline.retrain_on_unchanged=1"], r"retrain_on_unchanged=1 must be true or false"),
        (
            ["pipeline.lock_timeout_seconds=0"],
            r"lock_timeout_seconds=0 must be a finite number >= 1",
        ),
        (["pipeline.retries=-1"], r"pipeline.retries=-1 must be an integer >= 0"),
        (["pipeline.task_runner=ray"], r"task_runner='ray' is not allowed; choose one of threads"),
        (
            ["pipeline.task_runner=dask", "pipeline.dask_address=not an address"],
            r"dask_address='not an address' is not a Dask scheduler address",
        ),
        (["pipeline.dask_address=tcp://10.0.0.5:8786"], r"needs pipeline.task_runner='dask'"),
        (["data.shards=['a.csv']"], r"data.shards needs data.name"),
        (["data.shards='a.csv'", "data.name=x"], r"data.shards='a.csv' must be a list"),
        (["data.shards=[3]", "data.name=x"], r"must hold file paths"),
    ],
)
def test_bad_overrides_are_config_errors_naming_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[train\nepochs = 3\n", r"not valid TOML"),
        ("epochs = 3\n", r"unknown section\(s\) \['epochs'\]"),
        ("train = 3\n", r"section \[train\] must be a table"),
        ("[train]\nepochs = 3\nbatchsize = 10\n", r"unknown key\(s\) \['batchsize'\] in \[train\]"),
        ("preset = 3\n", r"preset=3 must be a string"),
    ],
)
def test_bad_files_are_config_errors_naming_the_file(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "pipeline.toml" in str(info.value) or "train" in str(info.value)


def test_missing_file_and_folder_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: file not found"):
        load_config(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"is a folder"):
        load_config(str(tmp_path))


def test_unknown_key_error_lists_every_valid_key():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["pipeline.retry=1"])
    for key in valid_keys("pipeline"):
        assert key in str(info.value)


def test_valid_dask_settings_and_dataset_name_defaults():
    cfg = load_config(
        overrides=[
            "pipeline.task_runner=dask",
            'pipeline.dask_address="tcp://10.0.0.5:8786"',
            "pipeline.workers=4",
        ]
    )
    assert cfg.pipeline.dask_address == "tcp://10.0.0.5:8786" and cfg.pipeline.workers == 4
    assert load_config(overrides=["data.source=fashion-mnist"]).data.dataset_name == "fashion-mnist"
    named = load_config(overrides=["data.source=/x/My Data.csv"]).data.dataset_name
    assert named == "my-data"


def test_config_is_frozen_and_round_trips_through_to_dict():
    cfg = load_config(overrides=["train.epochs=3", "model.hidden_sizes=[8]"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 4  # type: ignore[misc]
    d = cfg.to_dict()
    assert d["train"]["epochs"] == 3 and d["model"]["hidden_sizes"] == (8,)
    assert set(d) == {"preset", *SECTIONS}
