"""`aevb config show [--preset NAME]`: every config section and key with its type, default,
allowed values and meaning (generated from the typed config classes by flows/config_docs.py),
then where data and stores go and which environment variable decides it."""

from __future__ import annotations

import argparse
import textwrap

from flows.commands.common import HelpFormatter

PRESETS = ("default", "paper", "fast")  # a test asserts these equal models.config.PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show every config key with its type, default, allowed values and meaning",
        description="Print every section and key of the pipeline config (the TOML file given "
        "with --config, or section.key=value on the command line of train, pipeline, serve), "
        "then where data and stores go.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("action", choices=["show"], help="what to do")
    p.add_argument(
        "--preset",
        default="default",
        metavar="|".join(PRESETS),
        help="show the values this preset sets (keys it changes are marked *)",
    )
    p.set_defaults(func=run, check=check)


def check(args: argparse.Namespace) -> None:
    from models.config import preset_overrides

    preset_overrides(args.preset)  # an unknown preset: one line naming it and the choices


def run(args: argparse.Namespace, checked: None = None) -> int:
    print(format_config(args.preset))
    return 0


def format_config(preset: str) -> str:
    from flows.config_docs import describe
    from tasks.store.roots import describe as locations

    out = [
        f'aevb config (defaults of preset "{preset}"; * = set by the preset). Set keys in a TOML '
        "file (--config run.toml: [section] key = value) or as section.key=value arguments.",
    ]
    for section, summary, keys in describe(preset):
        out.append("")
        if section:
            out.append(f"[{section}]  {summary}")
        for k in keys:
            mark = "*" if k.from_preset else " "
            line = f" {mark}{k.name} = {k.default}"
            detail = k.type + (f"; {k.allowed}" if k.allowed else "")
            out.append(f"{line:<40} {detail}" if len(line) < 40 else f"{line}\n{'':40} {detail}")
            out += textwrap.wrap(k.meaning, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    out += ["", "where data and stores go (README: 'Where data and stores go'):"]
    for what, where, why in locations():
        out.append(f"  {what:<14} {where}  ({why})")
    return "\n".join(out)
