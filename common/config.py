"""Typed configs: a dataclass of defaults, overridden by CLI flags, saved as JSON.

Every script declares one dataclass. `parse_config` turns each field into a
`--field-name` flag of the field's type; an unknown flag is an error and flags are never
abbreviated. A field whose type is itself a dataclass is a group: its fields become flags
of their own (flat on the command line, nested in the config and its JSON), so each setting
is declared once, in the dataclass of the part that uses it. Leaf names are unique across
groups. A field with metadata `flag=False` is no flag (it is filled in from the data). A field
whose metadata has `positional=True` becomes a positional argument. Named presets bundle
several field values under one `--preset` flag.

Bounds live with the field they bound: `setting(default, help, ge=, gt=, le=, lt=, choices=)`. Relations
between settings are a dataclass's `RULES`: (test of the instance, message formatted with it as `c`).
`check_settings` applies both, to every group, and `parse_config` calls it: a value out of bounds exits
with one line naming its flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import field
from pathlib import Path

from common.io import InputError, atomic_write_text

BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
          "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def setting(default, help: str = " ", *, choices=None, flag: bool = True, positional: bool = False, **bounds):
    """A dataclass field with its help, allowed values and bounds (ge, gt, le, lt: each value of a list)."""
    unknown = set(bounds) - set(BOUNDS)
    assert not unknown, f"unknown bounds {sorted(unknown)}"
    meta = {"help": help, "bounds": bounds, "flag": flag, "positional": positional}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_settings(cfg, name=None) -> None:
    """Raise InputError naming the flag of the first setting out of its bounds or choices, or the first
    broken relation (a group's RULES, then its parent's). `name` maps a field name to what the message
    calls it (default: its flag)."""
    name = name or flag_name
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if _is_group(hints[f.name]):
            check_settings(value, name)
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        choices = f.metadata.get("choices")
        for v in values:
            if choices is not None and v not in choices:
                raise InputError(f"{name(f.name)} must be one of {', '.join(map(str, choices))}, got {v}")
            for kind, bound in f.metadata.get("bounds", {}).items():
                test, sign = BOUNDS[kind]
                if isinstance(v, (int, float)) and not (v == v and test(v, bound)):  # NaN fails every bound
                    raise InputError(f"{name(f.name)} must be {sign} {bound}, got {v}")
    for test, message in getattr(type(cfg), "RULES", ()):
        if not test(cfg):
            raise InputError(message.format(c=cfg))


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


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage block stays in --help)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see --help\n")


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    parser = Parser(description=description, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
        flag = flag_name(f.name)
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
    cfg = from_flat(cls, vars(parser.parse_args(argv)))
    check_settings(cfg)
    return cfg


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


def config_json(cfg) -> str:
    return json.dumps(config_dict(cfg), indent=2, sort_keys=True) + "\n"


def save_config(cfg, path: Path, stage=None) -> None:
    """Write the resolved config to `path` at once, or through `stage` (common.io.staged_files) with the
    files it belongs to."""
    if stage is None:
        atomic_write_text(Path(path), config_json(cfg))
    else:
        stage(path).write_text(config_json(cfg))
