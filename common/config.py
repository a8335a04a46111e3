"""Typed configs: a dataclass of defaults, overridden by CLI flags, saved as JSON.

Every script declares one dataclass. `parse_config` turns each field into a
`--field-name` flag of the field's type; an unknown flag is an error. A field
whose metadata has `positional=True` becomes a positional argument. Named
presets bundle several field values under one `--preset` flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from common.io import atomic_write_text


def _flag_type(tp):
    """The argparse `type` and `nargs` for a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner,) = set(typing.get_args(tp)) - {Ellipsis}
        return inner, "*"
    if origin is typing.Union:  # Optional[X]
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner, None
    return tp, None


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        helptext = f.metadata.get("help", " ")
        choices = f.metadata.get("choices")
        if f.metadata.get("positional"):
            inner, nargs = _flag_type(tp)
            parser.add_argument(f.name, type=inner, nargs=nargs or None, help=helptext)
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=helptext)
        else:
            inner, nargs = _flag_type(tp)
            parser.add_argument(flag, dest=f.name, type=inner, nargs=nargs, default=default,
                                choices=choices, help=helptext)
    return parser


def parse_config(cls, argv=None, description: str = "", presets: dict | None = None):
    """Defaults of `cls`, overridden by `argv` flags. Unknown flags exit with an error.

    With `presets` ({name: {field: value}}), `cls` has a `preset` field: the chosen preset's values
    replace the defaults, and flags given explicitly still override them.
    """
    parser = build_parser(cls, description)
    if presets:
        chosen = parser.parse_args(argv).preset
        if chosen:
            parser.set_defaults(**presets[chosen])
    return cls(**vars(parser.parse_args(argv)))


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cls, d: dict):
    """Rebuild `cls` from a saved dict, ignoring keys that are no longer fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def save_config(cfg, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(config_dict(cfg), indent=2, sort_keys=True) + "\n")
