"""The one trainer with a toy task, checkpoint checks, and nested configs from flat flags."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn as nn

from common.checkpoint import CHECKPOINT_VERSION, check_resumable, load_checkpoint
from common.config import check_settings, config_from_dict, flat_dict, from_flat, parse_config, save_config
from common.data import Dataset, build_dataset
from common.io import INTERRUPTED_STATUS, InputError, Interrupted, caused_by_interrupt, deferred_interrupt, run_main
from common.readers import RawData
from common.trainer import Lazy, Trainer, TrainerConfig, adam, learning_rate
from common.training import TrainConfig, train_config


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Dataset:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 12)
    items = rng.integers(1, 40, size=len(users))
    raw = RawData(users=users, items=items, times=np.arange(len(users), dtype=np.float64), source="toy")
    out = tmp_path_factory.mktemp("toy") / "d"
    build_dataset(raw, out, 2, 1, validation=True, name="toy")
    return Dataset(out, "valid")


@dataclass
class ToyArgs:
    n_items: int = 4
    hidden: int = 3
    layers: int = 1
    heads: int = 1
    max_len: int = 1
    pre_ln: bool = False
    final_ln: bool = False
    tied: bool = True


class ToyTask:
    """Least squares y = X w: each epoch 4 random batches; `scores` scripts what evaluate returns."""
    stage, label = "finetune", ""

    def __init__(self, rng: np.random.Generator, scores=None):
        self.rng, self.scores, self.args = rng, list(scores or []), ToyArgs()
        self.module = nn.Linear(3, 1)
        self.w = torch.tensor([[1.0], [-2.0], [0.5]])

    def describe(self) -> str:
        return "toy"

    def batches(self, epoch: int) -> Lazy:
        return Lazy(range(4), lambda _: torch.from_numpy(self.rng.normal(size=(16, 3))).float())

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.module(x) - x @ self.w) ** 2).mean()

    def checkpoint(self, kept: nn.Module) -> dict:
        return {"model_type": "sasrec", "model_args": dataclasses.asdict(self.args), "state_dict": kept.state_dict()}


class ScoredToyTask(ToyTask):
    def evaluate(self, kept: nn.Module) -> dict:
        return {"recall@10": self.scores.pop(0)}


def fit_toy(task_cls, ds, out, seed=0, **cfg) -> tuple:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    task = task_cls(rng, cfg.pop("scores", None))
    cfg = TrainerConfig(progress=False, lr=0.05, **cfg)
    Trainer(cfg, ds, out, torch.device("cpu"), {"toy": True}).fit(task, rng)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return task, metrics


def test_a_tiny_task_learns(ds, tmp_path):
    task, metrics = fit_toy(ToyTask, ds, tmp_path / "run", epochs=60)
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 100
    assert torch.allclose(task.module.weight.data, task.w.T, atol=0.05)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["epoch"] == 59 and ckpt["best_score"] is None, "without evaluate, every epoch is kept"
    assert ckpt["version"] == CHECKPOINT_VERSION and ckpt["stage"] == "finetune" and ckpt["config"] == {"toy": True}


def test_early_stopping_keeps_the_best_epoch(ds, tmp_path):
    scores = [0.1, 0.3, 0.2, 0.25, 0.29, 0.5]
    _, metrics = fit_toy(ScoredToyTask, ds, tmp_path / "run", epochs=10, patience=3, scores=scores)
    assert [m["recall@10"] for m in metrics] == [0.1, 0.3, 0.2, 0.25, 0.29], "stops after 3 epochs without gain"
    assert all(m["answers"] == "valid" for m in metrics)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["best_score"]) == (1, 0.3)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (last["epoch"], last["best_epoch"], last["bad_epochs"]) == (4, 1, 3)


def test_min_delta_stops_a_creeping_curve_and_keeps_its_best_epoch(ds, tmp_path):
    """Gains of 0.0005 do not restart the patience count at --min-delta 0.001; the kept epoch is still
    the best one. Against 0.2 (epoch 1's score), 0.2005 and 0.201 are not better by more than 0.001,
    0.2015 is; then 0.202, 0.2024 and 0.2019 are not."""
    scores = [0.1, 0.2, 0.2005, 0.201, 0.2015, 0.202, 0.2024, 0.2019, 0.3]
    _, metrics = fit_toy(ScoredToyTask, ds, tmp_path / "run", epochs=10, patience=3, min_delta=0.001, scores=scores)
    assert [m["recall@10"] for m in metrics] == scores[:8]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["best_score"]) == (6, 0.2024)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (last["best_epoch"], last["bad_epochs"], last["patience_mark"]) == (6, 3, 0.2015)
    _, plain = fit_toy(ScoredToyTask, ds, tmp_path / "plain", epochs=9, patience=3, scores=list(scores))
    assert len(plain) == 9, "without --min-delta every gain restarts the count: no stop after 8 epochs"


def test_select_last_reads_no_answers(ds, tmp_path):
    _, metrics = fit_toy(ScoredToyTask, ds, tmp_path / "run", epochs=3, select="last", scores=[])
    assert len(metrics) == 3 and not any("recall@10" in m or "answers" in m for m in metrics)


def test_resume_is_exact(ds, tmp_path):
    straight, _ = fit_toy(ToyTask, ds, tmp_path / "a", epochs=4, ema=0.5)
    fit_toy(ToyTask, ds, tmp_path / "b", epochs=2, ema=0.5)
    resumed, metrics = fit_toy(ToyTask, ds, tmp_path / "b", epochs=4, ema=0.5, resume=True)
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert torch.equal(straight.module.weight, resumed.module.weight)
    a, b = (load_checkpoint(tmp_path / x / "checkpoint.pt")["state_dict"] for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a), "the moving average resumes too"


def test_learning_rate_by_hand():
    """Cosine from 0.1 to 0.1 * 0.1 over 2 epochs of 4 steps, then held; warm-up over half an epoch."""
    cos = TrainerConfig(lr=0.1, schedule="cosine", decay_epochs=2, lr_floor=0.1)
    assert learning_rate(cos, 0, 0, 4) == pytest.approx(0.1)
    assert learning_rate(cos, 0, 2, 4) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 4))))
    assert learning_rate(cos, 1, 0, 4) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))  # halfway: 0.055
    assert learning_rate(cos, 2, 0, 4) == pytest.approx(0.01)
    assert learning_rate(cos, 7, 3, 4) == pytest.approx(0.01), "held at the floor after --decay-epochs"
    warm = TrainerConfig(lr=0.1, warmup_epochs=0.5)
    assert [learning_rate(warm, 0, s, 4) for s in range(4)] == pytest.approx([0.05, 0.1, 0.1, 0.1])
    assert learning_rate(TrainerConfig(lr=0.1), 3, 2, 4) == 0.1, "constant: --lr at every step"


def test_cosine_needs_its_horizon():
    with pytest.raises(InputError, match="--schedule cosine needs --decay-epochs"):
        check_settings(TrainerConfig(schedule="cosine"))
    check_settings(TrainerConfig(schedule="cosine", decay_epochs=3))


def test_a_scheduled_run_steps_at_its_rates_and_resumes_exactly(ds, tmp_path):
    sched = dict(schedule="cosine", decay_epochs=3, lr_floor=0.2, warmup_epochs=0.5)
    straight, metrics = fit_toy(ToyTask, ds, tmp_path / "a", epochs=4, **sched)
    cfg = TrainerConfig(lr=0.05, **sched)
    assert [m["lr"] for m in metrics] == pytest.approx([learning_rate(cfg, e, 3, 4) for e in range(4)])
    assert metrics[-1]["lr"] == pytest.approx(0.05 * 0.2)
    fit_toy(ToyTask, ds, tmp_path / "b", epochs=2, **sched)
    resumed, _ = fit_toy(ToyTask, ds, tmp_path / "b", epochs=4, resume=True, **sched)
    assert torch.equal(straight.module.weight, resumed.module.weight)
    constant, plain = fit_toy(ToyTask, ds, tmp_path / "c", epochs=4)
    assert not torch.equal(straight.module.weight, constant.module.weight), "the schedule changes the steps"
    assert "lr" not in plain[0], "a constant rate is not logged"


class CtrlCToyTask(ToyTask):
    """Sends itself Ctrl-C from inside its `at`-th checkpoint() call (each epoch calls it for checkpoint.pt, then
    for last.pt)."""
    at = 0

    def __init__(self, rng, scores=None):
        super().__init__(rng, scores)
        self.calls = 0

    def checkpoint(self, kept):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().checkpoint(kept)


def test_deferred_interrupt_finishes_its_block_then_raises():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the signal")
    assert done == ["after the signal"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_wrapped_in_another_error_still_exits_as_an_interrupt(capsys):
    def class_building_import():  # as Python 3.11 wraps an error raised inside __set_name__
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__") from e

    with pytest.raises(SystemExit) as stopped:
        run_main(class_building_import)
    assert stopped.value.code == INTERRUPTED_STATUS and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(ValueError):  # any other error is left alone
        run_main(lambda: int("x"))
    assert caused_by_interrupt(ValueError()) is False


def test_the_optimizer_holds_a_ctrl_c_until_it_is_built(monkeypatch):
    real, built = torch.optim.Adam.__init__, []

    def interrupted_init(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        real(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(torch.optim.Adam, "__init__", interrupted_init)
    with pytest.raises(KeyboardInterrupt):
        adam(torch.nn.Linear(3, 3), 1e-3, 0.0, torch.device("cpu"))
    assert len(built) == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("at, resume_at", [(3, 1), (4, 2)])  # inside epoch 1's checkpoint.pt, its last.pt
def test_ctrl_c_names_the_epoch_that_resume_starts_from(ds, tmp_path, at, resume_at):
    task = type("T", (CtrlCToyTask,), {"at": at})
    with pytest.raises(Interrupted, match=f"interrupted at epoch {resume_at}; continue with --resume"):
        fit_toy(task, ds, tmp_path / "run", epochs=5)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == resume_at - 1
    _, metrics = fit_toy(ToyTask, ds, tmp_path / "run", epochs=5, resume=True)
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3, 4]


def test_resume_refuses_another_stage_version_or_data(ds, tmp_path):
    fit_toy(ToyTask, ds, tmp_path / "run", epochs=1)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    with pytest.raises(InputError, match="pretrain stage"):
        check_resumable(ckpt, ds, "last.pt", stage="pretrain")
    with pytest.raises(InputError, match="format version 1 cannot be resumed"):
        check_resumable({**ckpt, "version": 1}, ds, "last.pt", stage="finetune")
    with pytest.raises(InputError, match="start a new run"):
        check_resumable({**ckpt, "data_fingerprint": "other"}, ds, "last.pt", stage="finetune")
    with pytest.raises(InputError, match="saved hidden=3, this model has hidden=4"):
        check_resumable(ckpt, ds, "last.pt", stage="finetune", args=dataclasses.replace(ToyArgs(), hidden=4))
    torch.save({**ckpt, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(InputError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_a_non_finite_loss_names_the_epoch_and_step(ds, tmp_path):
    class NanTask(ToyTask):
        def loss(self, x):
            return super().loss(x) * float("nan")
    with pytest.raises(InputError, match="loss became nan at epoch 0 step 0"):
        fit_toy(NanTask, ds, tmp_path / "run", epochs=1)


# ---------------------------------------------------------------- nested configs

def test_flat_flags_fill_nested_groups(tmp_path):
    cfg = parse_config(TrainConfig, ["--hidden", "8", "--loss", "ce", "--lr", "0.01", "--l2", "50", "--seed", "3",
                                     "--sp-weight", "0.1", "--no-tied"])
    assert (cfg.sasrec.hidden, cfg.sasrec.tied, cfg.objective.loss, cfg.trainer.lr, cfg.ease.l2, cfg.trainer.seed,
            cfg.pretrain.sp_weight) == (8, False, "ce", 0.01, 50.0, 3, 0.1)
    assert cfg == train_config(hidden=8, tied=False, loss="ce", lr=0.01, l2=50.0, seed=3, sp_weight=0.1)
    save_config(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["sasrec"]["hidden"] == 8 and saved["trainer"]["seed"] == 3 and saved["objective"]["loss"] == "ce"
    assert "n_items" in saved["sasrec"] and flat_dict(saved)["l2"] == 50.0
    assert config_from_dict(TrainConfig, saved) == cfg
    assert config_from_dict(TrainConfig, flat_dict(saved)) == cfg, "a flat dict rebuilds the same config"


def test_presets_set_nested_settings_and_flags_win():
    from common.training import PRESETS
    cfg = parse_config(TrainConfig, ["--preset", "holdout-ce", "--max-len", "20"], presets=PRESETS)
    assert (cfg.objective.history, cfg.trainer.batch_size, cfg.sasrec.pre_ln, cfg.sasrec.max_len) == \
        ("holdout", 128, True, 20)


@pytest.mark.parametrize("argv, message", [
    (["--epoch", "3"], "unrecognized arguments: --epoch 3"),  # no prefix matching
    (["--n-items", "5"], "unrecognized arguments: --n-items 5"),  # set from the data, not a flag
    (["--sasrec", "x"], "unrecognized arguments: --sasrec x"),  # groups are not flags
])
def test_abbreviations_and_non_flags_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse_config(TrainConfig, argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@dataclass
class GroupA:
    lr: float = 1.0


@dataclass
class GroupB:
    lr: float = 2.0


@dataclass
class Both:
    a: GroupA = field(default_factory=GroupA)
    b: GroupB = field(default_factory=GroupB)


def test_a_setting_declared_twice_is_refused():
    with pytest.raises(AssertionError, match=r"settings \['lr'\] are declared twice"):
        parse_config(Both, [])
    with pytest.raises(TypeError, match="no settings"):
        from_flat(TrainConfig, {"hiden": 3})
