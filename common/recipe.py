"""Recipe files: which members to train, which settings to try per data set, how to weigh them.

A recipe is a TOML file (read with the standard library's tomllib):

    k = 10                                  # length of the submitted lists
    candidates = 100                        # rows per user in each member's candidate file
    weight_grid = [0.0, 0.25, 0.5, 1.0, 2.0]   # values tried for every weight = "tune"
    tune_rounds = 2                         # coordinate-ascent passes over the tuned weights
    epoch_scale = 1.0                       # refit epochs = round(epoch_scale * epochs up to the best one)
    train_args = ""                         # flags for every 02_train.py call, e.g. "--device cuda"
    blend = "linear"                        # or "rerank": a gradient-boosted reranker over all members' candidates

    [rerank]                                # with blend = "rerank" (defaults: common.rerank.RerankConfig)
    max_iter = 300
    learning_rate = 0.02

    [[member]]
    name = "ease-seq"                       # letters, digits, '-' and '_'
    args = "--preset ease-seq"              # 02_train.py flags
    seeds = [42]                            # one run per seed; the seeds share the member's weight
    weight = "tune"                         # or a number
    grid = { l2 = [20.0, 50.0], window = [20, 50] }   # tried on the validation answers, first seed

Every choice a recipe leaves open (grid settings, epochs, tuned weights) is made on validation answers.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from common.config import check_settings
from common.io import InputError
from common.rerank import RerankConfig

TUNE = "tune"
NAME = re.compile(r"^[A-Za-z0-9_-]+$")
RECIPE_KEYS = {"k", "candidates", "weight_grid", "tune_rounds", "epoch_scale", "train_args", "member", "blend",
               "rerank"}
BLENDS = ("linear", "rerank")
MEMBER_KEYS = {"name", "args", "seeds", "weight", "grid"}
DEFAULT_SEED = 42
# 02_train.py flags that the pipeline sets itself (seeds come from `seeds`, k and devices from the recipe/CLI)
CONTROLLED = {"--data", "--split", "--select", "--seed", "--run-name", "--resume", "--k", "--device", "--threads",
              "--progress", "--no-progress"}


def _flag_names(args: list[str]) -> set[str]:
    """The flags among command-line words, '--x=1' counted as '--x'."""
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


@dataclass
class Member:
    name: str
    args: list[str]
    seeds: list[int] = field(default_factory=lambda: [DEFAULT_SEED])
    weight: float | str = TUNE
    grid: dict[str, list] = field(default_factory=dict)

    def grid_points(self) -> list[dict]:
        """Every combination of the grid's values, in file order ([{}] without a grid)."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class Recipe:
    path: str
    members: list[Member]
    k: int = 10
    candidates: int = 100
    weight_grid: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    tune_rounds: int = 2
    epoch_scale: float = 1.0
    train_args: list[str] = field(default_factory=list)
    blend: str = "linear"
    rerank: RerankConfig = field(default_factory=RerankConfig)
    text: str = ""  # the file as read

    def refit_epochs(self, best_epoch: int) -> int:
        """Epochs for a refit on more data: the epochs trained up to the best validation epoch (0-based),
        times epoch_scale, at least 1."""
        return max(1, round(self.epoch_scale * (best_epoch + 1)))


def settings_flags(settings: dict) -> list[str]:
    """02_train.py flags for grid settings: {"l2": 50} -> ["--l2", "50"]; booleans as --x / --no-x."""
    flags = []
    for key, value in settings.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            flags += [f"--{flag}", str(value)]
    return flags


def _check(cond: bool, path: Path, where: str, what: str) -> None:
    if not cond:
        raise InputError(f"{path}: {where}: {what}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _member(raw, path: Path, i: int) -> Member:
    where = f"member {i + 1}"
    _check(isinstance(raw, dict), path, where, "must be a table ([[member]])")
    unknown = set(raw) - MEMBER_KEYS
    _check(not unknown, path, where, f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(MEMBER_KEYS))})")
    name = raw.get("name")
    _check(isinstance(name, str) and bool(NAME.match(name)), path, where, "'name' must be letters, digits, '-' or '_'")
    where = f"member '{name}'"
    args = raw.get("args", "")
    _check(isinstance(args, str), path, where, "'args' must be a string of 02_train.py flags")
    taken = _flag_names(shlex.split(args)) & CONTROLLED
    _check(not taken, path, where, f"'args' sets {', '.join(sorted(taken))}, which the pipeline sets itself")
    seeds = raw.get("seeds", [DEFAULT_SEED])
    _check(isinstance(seeds, list) and len(seeds) > 0 and all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds) and len(set(seeds)) == len(seeds),
           path, where, "'seeds' must be a non-empty list of distinct integers")
    weight = raw.get("weight", TUNE)
    _check(weight == TUNE or (_number(weight) and weight >= 0), path, where,
           f"'weight' must be a number >= 0 or \"{TUNE}\", got {weight!r}")
    grid = raw.get("grid", {})
    _check(isinstance(grid, dict), path, where, "'grid' must be a table of setting = [values]")
    for key, values in grid.items():
        _check(isinstance(values, list) and len(values) > 0, path, where, f"grid '{key}' must be a non-empty list")
        _check(all(isinstance(v, (int, float, str, bool)) for v in values), path, where,
               f"grid '{key}' values must be numbers, strings or booleans")
        _check(f"--{key.replace('_', '-')}" not in _flag_names(shlex.split(args)), path, where,
               f"'{key}' is both in 'args' and in the grid")
        _check(f"--{key.replace('_', '-')}" not in CONTROLLED, path, where, f"grid '{key}' is set by the pipeline")
    return Member(name=name, args=shlex.split(args), seeds=list(seeds),
                  weight=weight if weight == TUNE else float(weight), grid=dict(grid))


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe file; every mistake is one line naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: recipe file not found")
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML ({str(e).splitlines()[0]})") from None
    unknown = set(raw) - RECIPE_KEYS
    _check(not unknown, path, "top level", f"unknown key(s) {', '.join(sorted(unknown))}")
    members = raw.get("member", [])
    _check(isinstance(members, list) and len(members) > 0, path, "top level", "needs at least one [[member]]")
    members = [_member(m, path, i) for i, m in enumerate(members)]
    names = [m.name for m in members]
    _check(len(set(names)) == len(names), path, "top level", "member names must be distinct")
    recipe = Recipe(path=str(path), members=members, text=text)
    for key in ("k", "candidates", "tune_rounds"):
        if key in raw:
            _check(isinstance(raw[key], int) and not isinstance(raw[key], bool) and raw[key] >= 1, path, key,
                   "must be an integer >= 1")
            setattr(recipe, key, raw[key])
    _check(recipe.candidates >= recipe.k, path, "candidates", f"must be >= k ({recipe.k})")
    if "weight_grid" in raw:
        grid = raw["weight_grid"]
        _check(isinstance(grid, list) and len(grid) > 0 and all(_number(v) and v >= 0 for v in grid), path,
               "weight_grid", "must be a non-empty list of numbers >= 0")
        recipe.weight_grid = [float(v) for v in grid]
    if "epoch_scale" in raw:
        _check(_number(raw["epoch_scale"]) and raw["epoch_scale"] > 0, path, "epoch_scale", "must be a number > 0")
        recipe.epoch_scale = float(raw["epoch_scale"])
    if "train_args" in raw:
        _check(isinstance(raw["train_args"], str), path, "train_args", "must be a string of 02_train.py flags")
        recipe.train_args = shlex.split(raw["train_args"])
        taken = _flag_names(recipe.train_args) & CONTROLLED
        _check(not taken, path, "train_args", f"sets {', '.join(sorted(taken))}, which the pipeline sets itself")
    if "blend" in raw:
        _check(raw["blend"] in BLENDS, path, "blend", f"must be one of {', '.join(BLENDS)}")
        recipe.blend = raw["blend"]
    if "rerank" in raw:
        table, known = raw["rerank"], {f.name: f.type for f in dataclasses.fields(RerankConfig)}
        _check(isinstance(table, dict), path, "rerank", "must be a table")
        for key, value in table.items():
            _check(key in known, path, f"rerank.{key}", f"unknown key; choose from {', '.join(known)}")
            if known[key] == "bool":
                _check(isinstance(value, bool), path, f"rerank.{key}", "must be true or false")
                setattr(recipe.rerank, key, value)
                continue
            want_int = known[key] == "int"
            ok = (isinstance(value, int) and not isinstance(value, bool)) if want_int else _number(value)
            _check(ok, path, f"rerank.{key}", f"must be {'an integer' if want_int else 'a number'}")
            setattr(recipe.rerank, key, int(value) if want_int else float(value))
        try:  # the bounds declared with RerankConfig's settings
            check_settings(recipe.rerank, name=lambda field_name: f"rerank.{field_name}")
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    fixed = [m.weight for m in members if m.weight != TUNE]
    _check(any(m.weight == TUNE for m in members) or sum(fixed) > 0, path, "weights", "the fixed weights are all 0")
    return recipe
