"""checkpoint_best.pt, `python -m edgesplit.evaluate` on the shared trained run, `init_from`, and the
run's closing line."""
import json
import logging
from pathlib import Path
from typing import Callable, List

import pytest
import torch

from edgesplit import evaluate
from edgesplit.config import compose_config
from edgesplit.errors import UserError
from edgesplit.logs.summary import EpochRecord, RunSummary
from edgesplit.run import best, checkpoint, trainer
from tests.trained_run import TRAINED, TrainedRun, copy_run


def _summary(values: List[float]) -> RunSummary:
    summary = RunSummary(backend="naive", epochs_planned=4, eval_compressed=True, overrides=[])
    for epoch, value in enumerate(values, 1):
        summary.history.append(EpochRecord(epoch, 0.1, 2.0, 10.0, value / 10, value, 90.0, 0.1))
        summary.epochs = epoch
    return summary


@pytest.mark.parametrize("monitor, mode, values, best_epoch, copies", [
    ("val/acc1", "max", [50.0, 70.0, 70.0], 2, False),  # the first of equals stays the best
    ("val/acc1", "max", [50.0, 70.0, 80.0], 3, True),
    ("val/loss", "min", [50.0, 70.0, 80.0], 1, False),  # val_loss is value / 10 here
])
def test_the_best_epoch_follows_the_monitor_and_its_mode(
        make_cfg: Callable, tmp_path: Path, monitor: str, mode: str, values: List[float],
        best_epoch: int, copies: bool) -> None:
    cfg = make_cfg(f"checkpoint.monitor={monitor}", f"checkpoint.mode={mode}")
    summary = _summary(values)
    assert best.best_epoch(summary, monitor, mode)[0] == best_epoch  # type: ignore[index]
    assert best.best_copies(summary, tmp_path, cfg) == ([tmp_path / best.NAME] if copies else [])


def test_the_run_keeps_its_best_checkpoint_and_says_how_it_ended(trained_run: TrainedRun) -> None:
    history = trained_run.straight_summary["history"]
    top = max(history, key=lambda h: h["val_acc1"])  # the first of the best
    for run in (trained_run.straight, trained_run.resumed):
        assert checkpoint.load(run / best.NAME)["epoch"] == top["epoch"]
    assert (f"finished after 3/3 epochs: best val/acc1 {top['val_acc1']:.4g} at epoch {top['epoch']} "
            f"({best.NAME}), final {history[-1]['val_acc1']:.4g} at epoch 3; results in "
            f"{trained_run.straight}") in trained_run.straight_log


@pytest.mark.parametrize("which", ["best", "last"])
def test_evaluate_reproduces_the_runs_recorded_figures(
        trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture, which: str) -> None:
    run = copy_run(trained_run.straight, tmp_path)
    history = trained_run.straight_summary["history"]
    expected = max(history, key=lambda h: h["val_acc1"]) if which == "best" else history[-1]
    assert evaluate.main([str(run), f"checkpoint={which}"]) == 0
    written = json.loads((run / evaluate.RESULT).read_text())
    assert written["epoch"] == expected["epoch"] and written["eval_compressed"] is True
    assert written["val_acc1"] == expected["val_acc1"] and written["val_loss"] == pytest.approx(
        expected["val_loss"], rel=1e-6)
    assert capsys.readouterr().out == (
        f"{which} checkpoint (epoch {expected['epoch']}): val loss {expected['val_loss']:.4f} acc1 "
        f"{expected['val_acc1']:.2f} acc5 {expected['val_acc5']:.2f}; written to {run / evaluate.RESULT}\n")


@pytest.mark.parametrize("argv, message", [
    ([], "usage: python -m edgesplit.evaluate RUN_DIR [checkpoint=best|last]"),
    (["{missing}"], "{missing} is not a run dir: it holds no checkpoint.pt or checkpoint_best.pt"),
    (["{run}", "checkpoint=first"],
     "'checkpoint=first' is invalid: allowed: checkpoint=best, checkpoint=last"),
    (["{run}", "ckpt=best"], "'ckpt=best' is invalid"),
    (["{run}"], "{run}/checkpoint_best.pt does not exist (a run written before edgesplit kept"),
    (["{broken}", "checkpoint=last"],
     "the config {broken}/checkpoint.pt recorded cannot be built: Missing key partition"),
])
def test_evaluate_refuses_in_one_line(trained_run: TrainedRun, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture, argv: List[str],
                                      message: str) -> None:
    run = tmp_path / "run"  # a run of an edgesplit before checkpoint_best.pt
    run.mkdir()
    (run / checkpoint.NAME).write_bytes((trained_run.straight / checkpoint.NAME).read_bytes())
    state = checkpoint.load(run / checkpoint.NAME)
    del state["config"]["partition"]  # a config this edgesplit cannot build
    (tmp_path / "broken").mkdir()
    checkpoint.atomic_save(state, tmp_path / "broken" / checkpoint.NAME)
    paths = {"run": str(run), "missing": str(tmp_path / "nothing"), "broken": str(tmp_path / "broken")}
    with caplog.at_level(logging.INFO, "edgesplit"):
        assert evaluate.main([a.format(**paths) for a in argv]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and message.format(**paths) in errors[0], errors
    assert not (run / evaluate.RESULT).exists()


def _fine_tune(*overrides: str) -> List[str]:
    return [*(o for o in TRAINED if not o.startswith("resume=")), "schedule.epochs=1", *overrides]


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_checkpoints_weights(
        trained_run: TrainedRun, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = trained_run.straight / best.NAME
    with caplog.at_level(logging.DEBUG, "edgesplit"):
        summary = trainer.run(compose_config(_fine_tune(f"init_from={source}")), tmp_path / "tuned", [])
    fresh = trained_run.straight_summary["history"][0]["val_acc1"]  # the same first epoch, from the seed
    assert fresh < 20 and summary["history"][0]["val_acc1"] > 50  # ten classes: chance is 10 %
    first_lr = trained_run.straight_summary["history"][0]["lr"]  # the schedule starts afresh
    assert summary["epochs"] == 1 and summary["history"][0]["lr"] == first_lr
    assert f"init_from={source}: the weights of its epoch 3" in caplog.text
    assert "the resolved config (without the secret):\n" in caplog.text  # at debug level


def test_init_from_a_bad_path_is_one_line(tmp_path: Path) -> None:
    """Said before the run builds anything (a missing file, in the run), or reads a file that is no
    checkpoint (JSON; a list of tensors, loaded as data only)."""
    with pytest.raises(UserError) as info:
        trainer.run(compose_config(_fine_tune(f"init_from={tmp_path}/none.pt")), tmp_path / "r", [])
    assert str(info.value) == (f"init_from={tmp_path}/none.pt: no such file (a run's checkpoint.pt or "
                               f"checkpoint_best.pt)")
    assert not (tmp_path / "r" / "summary.json").exists()
    (tmp_path / "summary.json").write_text("{}")
    checkpoint.atomic_save([torch.zeros(1)], tmp_path / "list.pt")
    for name, message in (("summary.json", "cannot read the checkpoint"),
                          ("list.pt", "not an edgesplit checkpoint")):
        with pytest.raises(UserError, match=message):
            best.read_weights(tmp_path / name)
