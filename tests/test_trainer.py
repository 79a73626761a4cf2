"""The training loop end to end on digits: results, files, resume, divergence, TensorBoard."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import DictConfig, OmegaConf
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from edgesplit.run import checkpoint, trainer
from edgesplit.errors import TrainingDiverged
from edgesplit.model.mobilenetv2 import build_units
from edgesplit.config import compose_config
from tests.conftest import ROOT, TEST_MODEL
from tests.trained_run import TRAINED, Interrupt, TrainedRun, copy_run, interrupt_after_first_epoch


@pytest.fixture
def make_cfg(make_cfg: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    """The tiny config on the 5-unit test model: these tests are about the run's plumbing."""
    return lambda *overrides: make_cfg(*TEST_MODEL, *overrides)


CONTRACT_TAGS = {"train/loss", "train/acc1", "val/loss", "val/acc1", "lr", "time/batch_s",
                 "memory/peak_bytes", "comm/up_bytes", "comm/down_bytes"}
SUMMARY_KEYS = {"val_acc1", "best_val_acc1", "val_loss", "train_loss", "epochs", "time_per_batch_s",
                "samples_per_s", "peak_memory_bytes", "backend", "comm", "sides"}


def test_run_writes_the_contract_files_and_learns(trained_run: TrainedRun) -> None:
    run_dir, summary = trained_run.straight, trained_run.straight_summary
    assert {p.name for p in run_dir.iterdir()} >= {"tb", "summary.json", "checkpoint.pt", "metrics.csv"}
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(on_disk) and on_disk["status"] == "finished" and on_disk["epochs"] == 3
    assert {"up_bytes_per_batch", "down_bytes_per_batch", "raw_up_bytes_per_batch",
            "raw_down_bytes_per_batch"} <= set(on_disk["comm"])
    assert set(on_disk["sides"]) == {"edge", "cloud"}
    assert on_disk["sides"]["cloud"]["parameters"] > on_disk["sides"]["edge"]["parameters"] > 0
    history = summary["history"]
    # the seed's schedule: warm-up 2 then cosine over 3 epochs, from lr 0.05
    assert [h["lr"] for h in history] == pytest.approx([0.025, 0.05 * 0.75, 0.05 * 0.25])
    assert summary["best_val_acc1"] == max(h["val_acc1"] for h in history)
    # 2-bit codes: about a sixteenth of the raw bytes
    assert on_disk["comm"]["up_bytes_per_batch"] < 0.1 * on_disk["comm"]["raw_up_bytes_per_batch"]

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert CONTRACT_TAGS <= tags
    assert {"boundary/front_forward/rel_error", "boundary/front_forward/sparsity"} <= tags
    assert [e.value for e in events.Scalars("val/acc1")] == pytest.approx([h["val_acc1"] for h in history])


def _same_numbers(resumed: dict, straight: dict) -> None:
    for key in ("train_loss", "val_loss", "val_acc1", "best_val_acc1"):
        assert resumed[key] == straight[key], key
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in straight["history"]]


def test_a_resumed_gpipe_run_ends_with_the_numbers_of_an_uninterrupted_one(trained_run: TrainedRun) -> None:
    """The weights, the optimizer's momentum, the LR schedule, error feedback's residuals (the senders':
    front on the edge, back on the cloud) and stochastic rounding's draw keys are in the checkpoint:
    the shared run killed after epoch 1 and resumed ends bit-exact."""
    assert trained_run.killed_epoch == 1
    _same_numbers(trained_run.resumed_summary, trained_run.straight_summary)
    state = [trained_run.resumed_summary["sides"][side]["codec_state_bytes"] for side in ("edge", "cloud")]
    assert state[0] > 0 and state[1] > 0


def test_a_resumed_naive_run_with_per_sample_references_ends_with_the_uninterrupted_numbers(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """delta's per-sample references (each side holds one end of each boundary's) are in the checkpoint."""
    cfg = make_cfg("compressor=delta", "compressor.bits=2", "data.augment=fixed", "pipeline_backend=naive")
    straight = trainer.run(cfg, tmp_path / "straight", [])
    with monkeypatch.context() as m:
        interrupt_after_first_epoch(m)
        with pytest.raises(Interrupt):
            trainer.run(cfg, tmp_path / "resumed", [])
    assert checkpoint.load(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    cfg.resume = True
    resumed = trainer.run(cfg, tmp_path / "resumed", [])
    _same_numbers(resumed, straight)
    state = [resumed["sides"][side]["codec_state_bytes"] for side in ("edge", "cloud")]
    assert state[0] == state[1] > 0


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_skipped(
        trained_run: TrainedRun, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "does not exist: starting fresh" in trained_run.straight_log  # resume=true from the start
    run_dir = copy_run(trained_run.straight, tmp_path)
    mtime = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = trainer.run(compose_config(TRAINED), run_dir, [])
    assert "finished all 3 epochs already" in caplog.text
    assert again["val_acc1"] == trained_run.straight_summary["val_acc1"]
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("writer, reader", [("gpipe", "naive"), ("naive", "gpipe"),
                                            pytest.param("gpipe", "dist", marks=pytest.mark.slow),
                                            pytest.param("dist", "naive", marks=pytest.mark.slow)])
def test_a_checkpoint_of_one_backend_resumes_in_the_other(make_cfg: Callable, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          writer: str, reader: str) -> None:
    # one micro-batch, as naive: the backend may change on resume=true, the numbers may not
    extra = ["pipeline_backend.deferred_batch_norm=true"] if writer == "gpipe" else []
    cfg = make_cfg(f"pipeline_backend={writer}", "pipeline_backend.chunks=1", *extra)
    with monkeypatch.context() as m:
        interrupt_after_first_epoch(m)
        with pytest.raises(Interrupt):
            trainer.run(cfg, tmp_path, [])
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert sorted(saved["units"]) == list(range(5))
    units = build_units(cfg.model, 10)
    for i, unit in enumerate(units):  # loads into a plain model, no key left over
        checkpoint.load_unit(unit, saved["units"][i])
    # deferred BatchNorm changes the running statistics: a change that needs resume=force
    mode = "force" if extra else "true"
    resumed = trainer.run(make_cfg(f"pipeline_backend={reader}", "pipeline_backend.chunks=1",
                                   f"resume={mode}"), tmp_path, [])
    assert resumed["status"] == "finished" and resumed["epochs"] == 2 and resumed["backend"] == reader
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["resumed_with_changes"] == (["pipeline_backend.deferred_batch_norm"] if extra else [])


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        interrupt_after_first_epoch(m)
        with pytest.raises(Interrupt):
            trainer.run(make_cfg("pipeline_backend=naive"), tmp_path, [])
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(TrainingDiverged) as info:
        trainer.run(make_cfg("pipeline_backend=naive", "resume=force", "schedule.lr=1e12",
                             "compressor=none"), tmp_path, [])
    message = str(info.value)
    assert "at epoch 2 step" in message and "checkpoint" in message and "epoch 1) is kept" in message
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == message and summary["epochs"] == 1
    assert "schedule.lr" in summary["resumed_with_changes"]


@pytest.mark.slow
def test_smoke_experiment_reaches_90_percent_on_digits(tmp_path: Path) -> None:
    """README's `python train.py experiment=smoke` as written (the preset pins threads=1)."""
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=smoke",
                          f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    threads = OmegaConf.load(tmp_path / ".hydra" / "config.yaml").threads  # the preset pins it
    assert out.returncode == 0 and summary["status"] == "finished", (out.stdout + out.stderr)[-2000:]
    assert summary["best_val_acc1"] > 90 and threads == 1


class _Exploit:
    def __reduce__(self) -> Any:
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def test_a_planted_checkpoint_runs_no_code_on_resume(make_cfg: Callable, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"epoch": 1, "units": _Exploit()}, tmp_path / "checkpoint.pt")
    with pytest.raises(checkpoint.CheckpointError, match="cannot read the checkpoint .*checkpoint.pt"):
        trainer.run(make_cfg("pipeline_backend=naive", "resume=true"), tmp_path, [])
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("key", ["val_loss", "val_acc1"])
def test_a_non_finite_evaluation_stops_like_a_diverged_step(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    real_evaluate = trainer.evaluate
    calls = []

    def nan_in_the_second_epoch(backend: Any, loader: Any) -> dict:
        calls.append(1)
        metrics = real_evaluate(backend, loader)
        return {**metrics, key: float("nan")} if len(calls) == 2 else metrics
    monkeypatch.setattr(trainer, "evaluate", nan_in_the_second_epoch)
    with pytest.raises(TrainingDiverged) as info:
        trainer.run(make_cfg("pipeline_backend=naive"), tmp_path, [])
    assert str(info.value).startswith(f"{key} is nan after epoch 2 (schedule.lr=0.05); the last good "
                                      f"checkpoint ({tmp_path / 'checkpoint.pt'}, epoch 1) is kept")
    assert checkpoint.load(tmp_path / "checkpoint.pt")["epoch"] == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["epochs"], summary["error"]) == ("failed", 1, str(info.value))


def test_compressor_warm_up_epochs_send_raw_values_and_count_them(make_cfg: Callable,
                                                                  tmp_path: Path) -> None:
    cfg = make_cfg("pipeline_backend=naive", "compressor=quantize4", "compressor.warmup_epochs=1")
    summary = trainer.run(cfg, tmp_path, [])
    raw = summary["comm"]["raw_up_bytes_per_batch"]
    first, second = summary["history"]
    assert raw <= first["up_bytes_per_batch"] < 1.001 * raw  # raw values and the codec headers
    assert second["up_bytes_per_batch"] == pytest.approx(raw / 8, rel=0.01)  # 4-bit codes
