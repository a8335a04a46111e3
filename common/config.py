"""Typed configs: a dataclass of defaults, overridden by CLI flags, saved as JSON.

Every script declares one dataclass. `parse_config` turns each field into a
`--field-name` flag of the field's type; an unknown flag is an error and flags are never
abbreviated. A field whose type is itself a dataclass is a group: its fields become flags
of their own (flat on the command line, nested in the config and its JSON), so each setting
is declared once, in the dataclass of the part that uses it. Leaf names are unique across
groups. A field with metadata `flag=False` is no flag (it is filled in from the data). A field
whose metadata has `positional=True` becomes a positional argument. Named presets bundle
several field values under one `--preset` flag.
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


def _is_group(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaf_fields(cls) -> list[tuple[dataclasses.Field, type]]:
    """(field, type) of every setting of `cls`, groups expanded in order; flag names must be unique."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out += leaf_fields(hints[f.name]) if _is_group(hints[f.name]) else [(f, hints[f.name])]
    names = [f.name for f, _ in out if f.metadata.get("flag", True)]  # non-flags (n_items) may repeat
    dup = {n for n in names if names.count(n) > 1}
    assert not dup, f"{cls.__name__}: settings {sorted(dup)} are declared twice"
    return out


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f, tp in leaf_fields(cls):
        if not f.metadata.get("flag", True):
            continue
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


def from_flat(cls, values: dict):
    """`cls` with each setting taken from the flat {name: value} (groups filled recursively); a
    missing name keeps its default. Unknown names are an error."""
    unknown = set(values) - {f.name for f, _ in leaf_fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no settings {sorted(unknown)}")
    return _build(cls, values)


def _build(cls, values: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if _is_group(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def parse_config(cls, argv=None, description: str = "", presets: dict | None = None):
    """Defaults of `cls`, overridden by `argv` flags. Unknown flags exit with an error.

    With `presets` ({name: {setting: value}}), `cls` has a `preset` setting: the chosen preset's values
    replace the defaults, and flags given explicitly still override them.
    """
    parser = build_parser(cls, description)
    if presets:
        chosen = parser.parse_args(argv).preset
        if chosen:
            parser.set_defaults(**presets[chosen])
    return from_flat(cls, vars(parser.parse_args(argv)))


def config_dict(cfg) -> dict:
    """The config as nested dicts, one per group."""
    return dataclasses.asdict(cfg)


def flat_dict(d: dict) -> dict:
    """A saved (nested) config as one flat {setting: value} dict, as the flags name them."""
    out = {}
    for k, v in d.items():
        out.update(flat_dict(v) if isinstance(v, dict) else {k: v})
    return out


def config_from_dict(cls, d: dict):
    """Rebuild `cls` from a saved dict (nested or flat), ignoring keys that are no longer settings."""
    names = {f.name for f, _ in leaf_fields(cls)}
    return _build(cls, {k: v for k, v in flat_dict(d).items() if k in names})


def save_config(cfg, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(config_dict(cfg), indent=2, sort_keys=True) + "\n")
