"""Typed configs: flags override defaults, unknown flags fail, presets bundle values, JSON round trip."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from common.config import config_from_dict, parse_config, save_config

PRESETS = {"fast": {"lr": 0.01, "epochs": 3}, "wide": {"hidden": 256, "tied": False}}


@dataclass
class Toy:
    preset: str = field(default="", metadata={"choices": ("", *PRESETS)})
    lr: float = 1e-3
    epochs: int = 200
    hidden: int = 64
    tied: bool = True
    weights: list[float] = field(default_factory=lambda: [1.0])
    name: str = ""


def test_flags_override_typed_defaults():
    cfg = parse_config(Toy, ["--lr", "0.5", "--no-tied", "--weights", "2", "3", "--name", "x"])
    assert cfg == Toy(lr=0.5, tied=False, weights=[2.0, 3.0], name="x")
    assert isinstance(cfg.epochs, int) and isinstance(cfg.lr, float)
    assert parse_config(Toy, []) == Toy()


@pytest.mark.parametrize("argv, message", [
    (["--lr-rate", "1"], "unrecognized arguments: --lr-rate"),
    (["--epochs", "two"], "--epochs: invalid int value: 'two'"),
    (["--preset", "slow"], "--preset: invalid choice: 'slow'"),
])
def test_unknown_flag_and_bad_value_are_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse_config(Toy, argv, presets=PRESETS)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_preset_replaces_defaults_and_explicit_flags_win():
    cfg = parse_config(Toy, ["--preset", "fast"], presets=PRESETS)
    assert (cfg.preset, cfg.lr, cfg.epochs, cfg.hidden) == ("fast", 0.01, 3, 64)
    cfg = parse_config(Toy, ["--epochs", "7", "--preset", "fast"], presets=PRESETS)  # order does not matter
    assert (cfg.lr, cfg.epochs) == (0.01, 7)
    cfg = parse_config(Toy, ["--preset", "wide", "--tied"], presets=PRESETS)
    assert (cfg.hidden, cfg.tied) == (256, True)
    assert parse_config(Toy, [], presets=PRESETS) == Toy()


def test_saved_config_round_trips(tmp_path):
    cfg = parse_config(Toy, ["--preset", "wide", "--weights", "0.5"], presets=PRESETS)
    save_config(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hidden"] == 256 and saved["preset"] == "wide"
    assert config_from_dict(Toy, {**saved, "retired_field": 1}) == cfg
