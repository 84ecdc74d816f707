"""Every config key with its type, default, allowed values and meaning, generated from the typed
config classes (models/config.py, flows/config.py): what `aevb config show` prints and what the
`train`/`pipeline` --help epilogs list.

A key's meaning is its line in the class docstring's "Keys:" table::

    Keys:
        epochs: passes over the training split; early stopping may end sooner {>= 1}
            (deeper-indented lines continue the meaning)

``{...}`` at the end is the allowed range of a number or string; for ``Literal`` and ``bool``
fields the allowed values come from the type itself. Standard library + first-party config
modules only, so `--help` stays quick.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<name>[a-z_][a-z0-9_]*): (?P<text>.+)$")
_ALLOWED = re.compile(r"\s*\{(?P<allowed>.+)\}$")
# What --help lists under "most used keys" (train and pipeline).
COMMON_KEYS = (
    "preset",
    "model.latent_dim",
    "model.hidden_sizes",
    "model.likelihood",
    "train.epochs",
    "train.batch_size",
    "train.optimizer",
    "train.learning_rate",
    "train.estimator",
    "train.num_samples",
    "evaluate.num_samples",
)


@dataclass(frozen=True)
class KeyDoc:
    section: str  # "" for the top-level `preset`
    name: str
    type: str
    default: str  # as TOML
    allowed: str
    meaning: str
    from_preset: bool = False  # the preset changes this default

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def docstring_table(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (meaning, allowed)} from the "Keys:" table of ``cls.__doc__``."""
    out: dict[str, tuple[str, str]] = {}
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("Keys"))
    except StopIteration:
        return out
    name, indent, text = None, 0, ""
    for line in [*lines[start + 1 :], ""]:
        match = _KEY_LINE.match(line)
        if match and (name is None or len(match["indent"]) <= indent):
            if name:
                out[name] = _split_allowed(text)
            name, indent, text = match["name"], len(match["indent"]), match["text"].strip()
        elif name and line.strip() and len(line) - len(line.lstrip()) > indent:
            text += " " + line.strip()
        elif name:
            out[name] = _split_allowed(text)
            name = None
    return out


def _split_allowed(text: str) -> tuple[str, str]:
    match = _ALLOWED.search(text)
    if match is None:
        return text, ""
    return text[: match.start()].rstrip(), match["allowed"]


def type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return type(args[0]).__name__
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return (
            f"{type_name(rest[0])} or unset" if len(rest) == 1 else " | ".join(map(type_name, rest))
        )
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "table"
    return getattr(hint, "__name__", str(hint))


def allowed_values(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is tuple and typing.get_origin(args[0]) is Literal:
        return "any of " + ", ".join(json.dumps(a) for a in typing.get_args(args[0]))
    if hint is bool:
        return "true, false"
    return ""


def toml_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def section_docs(cls: type, section: str, values: Any, plain: Any) -> list[KeyDoc]:
    """One KeyDoc per settable field of ``cls``; ``values`` / ``plain``: the section's instance
    with and without the preset (to mark what the preset changes)."""
    from flows.config import valid_keys

    hints = typing.get_type_hints(cls)
    table = docstring_table(cls)
    names = valid_keys(section) if section else ["preset"]
    docs = []
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        meaning, allowed = table.get(f.name, ("", ""))
        value, base = getattr(values, f.name), getattr(plain, f.name)
        docs.append(
            KeyDoc(
                section,
                f.name,
                type_name(hints[f.name]),
                toml_value(value),
                allowed_values(hints[f.name]) or allowed,
                meaning,
                from_preset=value != base,
            )
        )
    return docs


def describe(preset: str = "default") -> list[tuple[str, str, list[KeyDoc]]]:
    """[(section, its summary line, its keys)] with the defaults of ``preset``; "" = top level."""
    from flows.config import SECTIONS, PipelineConfig, load_config

    config, plain = load_config(None, [f"preset={preset}"]), PipelineConfig()
    out = [("", "", section_docs(PipelineConfig, "", config, plain))]
    for name, cls in SECTIONS.items():
        summary = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        out.append(
            (name, summary, section_docs(cls, name, getattr(config, name), getattr(plain, name)))
        )
    return out


def shell_value(doc: KeyDoc) -> str:
    """The default as typed after KEY= on a command line (strings need no quotes there)."""
    return doc.default[1:-1] if doc.default.startswith('"') else doc.default


def common_keys_epilog() -> str:
    """The --help epilog of `train` and `pipeline`: the most used keys and where the rest are."""
    import textwrap

    docs = {d.dotted: d for _, _, keys in describe() for d in keys}
    lines = ["most used settings (KEY=VALUE, or [section] key = value in a --config file):"]
    for key in COMMON_KEYS:
        d = docs[key]
        choices = d.allowed.removeprefix("one of ").replace('"', "")
        text = d.meaning.split(";")[0] + (f" [{choices}]" if d.allowed.startswith("one of") else "")
        lines += textwrap.wrap(
            text,
            98,
            initial_indent=f"  {key + '=' + shell_value(d):<30}  ",
            subsequent_indent=" " * 34,
        )
    lines.append("every section and key with type, default and allowed values: aevb config show")
    lines.append("the presets' defaults: aevb config show --preset paper | fast")
    return "\n".join(lines)
