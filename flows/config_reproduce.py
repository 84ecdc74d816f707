"""`aevb reproduce` KEY=VALUE settings: typed fields of `tasks.reproduce.settings.ReproduceSettings`
(tuples as comma lists), every number finite and > 0."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from models.errors import ConfigError


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
        values = value if isinstance(value, tuple) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if any(not math.isfinite(v) or v <= 0 for v in numbers):
            if isinstance(value, tuple):
                raise ConfigError(
                    f"reproduce override {key}={list(value)!r}: values must be > 0 (and finite)"
                )
            raise ConfigError(f"reproduce override {key}={value!r} must be > 0 (and finite)")
    return out
