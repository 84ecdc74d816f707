"""Argument helpers shared by several verbs."""

from __future__ import annotations

import argparse
import json
import math
import re


def finite_float(text: str) -> float:
    """argparse type: a finite number (float() alone takes 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


class HelpFormatter(argparse.HelpFormatter):
    """Every verb's --help: unindented description/epilog lines are wrapped, indented ones (tables)
    kept as written; every option whose help does not already say its default gets
    "(default: X)" (None and False defaults are not shown)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        out = []
        for line in text.splitlines():
            if line[:1].isspace() or not line:
                out.append(indent + line)
            else:
                out += textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent)
        return "\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings or action.nargs in ("?", "*")
        hidden = action.default is None or action.default is False
        if not shown or hidden or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def data_root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="data root folder or URI such as s3://bucket/prefix (default: $AEVB_DATA_ROOT, "
        "else data/ of the checkout you are in, else $AEVB_HOME/data; `aevb config show`)",
    )


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=None, help="pipeline config file (TOML; keys: `aevb config show`)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.epochs=5 model.latent_dim=2 preset=paper "
        "(every key: `aevb config show`)",
    )


def settings_epilog() -> str:
    """The most used config keys with their defaults (train and pipeline --help)."""
    from flows.config_docs import common_keys_epilog

    return common_keys_epilog()


def pipeline_config(args: argparse.Namespace, extra: list[str] | None = None):
    from flows.config import load_config

    overrides = list(extra or []) + list(getattr(args, "overrides", []) or [])
    return load_config(args.config, overrides)


def take_misread_override(args: argparse.Namespace) -> None:
    """`aevb pipeline train.epochs=3`: argparse hands the first KEY=VALUE to the SOURCE slot."""
    src = args.source or ""
    if re.match(r"^[A-Za-z_]+(\.[A-Za-z_]+)?\s*=", src):
        args.overrides = [src, *(getattr(args, "overrides", None) or [])]
        args.source = None


def data_overrides(source: str | None, name: str | None, data_root: str | None) -> list[str]:
    """The `data.*` overrides given by SOURCE, --name and --data-root (the verbs' positional forms)."""
    pairs = (("source", source), ("name", name), ("data_root", data_root))
    return [f"data.{key}={json.dumps(value)}" for key, value in pairs if value]


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def section_with_flags(args: argparse.Namespace, section: str, flags: dict[str, object]):
    """The config ``section`` with the given flags laid over the file and overrides (flags win).

    A bad value given as a flag is reported as that flag (``--log-px-samples=-1 ...``), not as
    the config key it became (``score.log_px_samples=-1``)."""
    from flows.config import load_config
    from models.errors import ConfigError

    given = {k: v for k, v in flags.items() if v is not None}
    as_toml = [
        f"{section}.{k}={str(v).lower() if isinstance(v, bool) else repr(v)}"
        for k, v in given.items()
    ]
    try:
        return getattr(load_config(args.config, [*(args.overrides or []), *as_toml]), section)
    except ConfigError as exc:
        message = str(exc)
        for key in given:
            if message.startswith(f"{section}.{key}="):
                flag = "--" + key.replace("_", "-")
                raise ConfigError(flag + message[len(section) + 1 + len(key) :]) from exc
        raise
