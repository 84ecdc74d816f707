"""Where settings come from besides the defaults: a TOML config file, `section.key=value`
overrides and the environment.

`read_config_file` reads `--config FILE` safely (regular files only, at most 1 MB, UTF-8, TOML);
`check_environment` refuses bad numeric environment settings before any work starts, naming the
variable, instead of failing deep inside a run (or at an import).
"""

from __future__ import annotations

import math
import os
import stat
import sys
from collections.abc import Mapping
from typing import Any

from models.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_CONFIG_BYTES = 1 << 20


def read_config_file(path: str) -> dict[str, Any]:
    """The TOML table of a config file; ConfigError for a missing, special, huge, non-UTF-8 or
    invalid file (a FIFO or a device would block or never end: only regular files are read)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as exc:
        raise ConfigError(f"--config {path}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot be examined ({exc.strerror})") from exc
    if stat.S_ISDIR(mode):
        raise ConfigError(f"--config {path}: is a folder, expected a TOML file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"--config {path}: not a regular file (a FIFO, socket or device)")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot be read ({exc.strerror})") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: larger than 1 MB; is this a config file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8: "
            "save it as UTF-8"
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from exc


ENV_FLOATS = {  # environment settings read as numbers: (minimum, what they are)
    "AEVB_STAGING_LEASE_SECONDS": (1.0, "seconds before another host's stage counts as dead"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": (1.0, "seconds to wait for Prefect"),
}


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Refuse bad numeric environment settings up front, naming the variable (before they would
    fail deep inside a run): the float ones above and the model cache's size."""
    env = os.environ if env is None else env
    for key, (low, what) in ENV_FLOATS.items():
        if key not in env:
            continue
        try:
            value = float(env[key])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low:
            raise ConfigError(f"{key}={env[key]!r} must be a finite number >= {low:g} ({what})")
    from tasks.model_cache import limit_bytes

    limit_bytes(env)


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value); the value is parsed as TOML, else kept a string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(
            f"override {item!r} must look like section.key=value, e.g. train.epochs=5"
        )
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    return section.strip(), key.strip(), parse_value(raw)


def parse_value(raw: str) -> Any:
    """A TOML value, else the text as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
