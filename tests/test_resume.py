"""Resume: the config check (true/force), the checkpoint as source of truth, unreadable checkpoints,
a full disk, and Ctrl-C."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
from omegaconf import DictConfig, OmegaConf

from edgesplit.run import checkpoint, rundir, trainer
from edgesplit.run.checkpoint import CheckpointError
from edgesplit.config import compose_config
from edgesplit.errors import ConfigError, UserError
from edgesplit.run.resume import config_changes
from tests.conftest import ROOT, TEST_MODEL, TINY
from tests.trained_run import TRAINED, TrainedRun, copy_run


@pytest.fixture
def make_cfg(make_cfg: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    """The tiny config on the 5-unit test model: these tests are about the run's plumbing."""
    return lambda *overrides: make_cfg(*TEST_MODEL, *overrides)


def _resolved(*overrides: str) -> Dict[str, Any]:
    container = OmegaConf.to_container(compose_config(TINY + list(overrides)), resolve=True)
    assert isinstance(container, dict)
    return container


def test_result_neutral_keys_may_differ_and_the_rest_are_listed() -> None:
    saved = _resolved("pipeline_backend=gpipe", "pipeline_backend.chunks=1")
    same = _resolved("pipeline_backend=dist", "pipeline_backend.chunks=1", "threads=2", "log_every=3",
                     "data.num_workers=2", "hparam_keys=[seed]", "pipeline_backend.link.latency_ms=5",
                     "pipeline_backend.timeout_s=9", "pipeline_backend.order=1f1b", "resume=true",
                     "pipeline_backend.edge_slowdown=2",
                     "logger=mlflow", "checkpoint.monitor=val/loss", "checkpoint.mode=min", "init_from=x.pt")
    assert config_changes(saved, same) == []
    older = {k: v for k, v in saved.items() if k not in ("checkpoint", "init_from")}  # written before them
    assert config_changes(older, saved) == []
    changed = _resolved("pipeline_backend=gpipe", "pipeline_backend.chunks=2", "seed=3", "schedule.lr=0.1",
                        "pipeline_backend.deferred_batch_norm=true", "compressor=prune")
    keys = [k for k, _, _ in config_changes(saved, changed)]
    quantizing = [f"compressor.{part}{key}" for part in ("activation.", "", "gradient.")
                  for key in ("bits", "group_size", "rounding", "scale")]  # quantize's keys
    assert keys == sorted(quantizing + [
        "compressor.activation._target_", "compressor.activation.ratio",
        "compressor.gradient._target_", "compressor.name", "compressor.ratio",
        "optimizer.lr",  # ${schedule.lr}: the resolved configs are compared
        "pipeline_backend.chunks", "pipeline_backend.deferred_batch_norm", "schedule.lr", "seed"])
    assert ("compressor.bits", 8, "<absent>") in config_changes(saved, changed)


def test_resume_true_with_other_values_stops_listing_each_key(trained_run: TrainedRun,
                                                              tmp_path: Path) -> None:
    run_dir = copy_run(trained_run.straight, tmp_path)
    before = (run_dir / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError) as info:
        trainer.run(compose_config([*TRAINED, "seed=1", "schedule.lr=0.1", "threads=2"]), run_dir, [])
    message = str(info.value)
    assert message.startswith("resume=true with a config that differs from the checkpoint's (")
    assert "schedule.lr 0.05 -> 0.1, seed 3 -> 1; use the checkpoint's values, or resume=force" in message
    assert "threads" not in message and "\n" not in message
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_a_finished_run_continues_to_more_epochs_only_with_force(trained_run: TrainedRun,
                                                                 tmp_path: Path) -> None:
    run_dir = copy_run(trained_run.straight, tmp_path)
    with pytest.raises(ConfigError, match="schedule.epochs 3 -> 4"):
        trainer.run(compose_config([*TRAINED, "schedule.epochs=4"]), run_dir, [])
    summary = trainer.run(compose_config([*TRAINED, "schedule.epochs=4", "resume=force"]), run_dir, [])
    assert summary["status"] == "finished" and summary["epochs"] == 4 and summary["epochs_planned"] == 4
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    assert summary["resumed_with_changes"] == ["schedule.epochs"]
    assert json.loads((run_dir / "summary.json").read_text())["resumed_with_changes"] == ["schedule.epochs"]


@pytest.mark.slow
def test_resume_repairs_a_summary_killed_between_the_two_writes(make_cfg: Callable, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["pipeline_backend=naive"]
    real_write = trainer.write_summary

    def killed_after_the_last_checkpoint(run_dir: Path, summary: Any) -> None:
        if summary.epochs == summary.epochs_planned:
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after it runs
        real_write(run_dir, summary)
    with monkeypatch.context() as m:
        m.setattr(trainer, "write_summary", killed_after_the_last_checkpoint)
        m.setattr(trainer, "_write_on_the_way_out", lambda run_dir, summary: None)
        with pytest.raises(KeyboardInterrupt):
            trainer.run(make_cfg(*args), tmp_path, [])
    assert checkpoint.load(tmp_path / "checkpoint.pt")["epoch"] == 2
    stale = json.loads((tmp_path / "summary.json").read_text())
    assert (stale["status"], stale["epochs"]) == ("running", 1)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, *TEST_MODEL, *args, "resume=true",
                           f"hydra.run.dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "summary.json rewritten from the checkpoint's summary" in proc.stdout + proc.stderr
    assert "finished all 2 epochs already: nothing to resume" in proc.stdout + proc.stderr
    repaired = json.loads((tmp_path / "summary.json").read_text())
    assert (repaired["status"], repaired["epochs"]) == ("finished", 2)
    assert [h["epoch"] for h in repaired["history"]] == [1, 2]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip at all", "truncated"])
def test_an_unreadable_checkpoint_is_one_line_naming_it(make_cfg: Callable, tmp_path: Path,
                                                        trained_run: TrainedRun, content: Any) -> None:
    path = tmp_path / "checkpoint.pt"
    if content == "truncated":
        whole = (trained_run.straight / "checkpoint.pt").read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        trainer.run(make_cfg("pipeline_backend=naive", "resume=true"), tmp_path, [])
    assert str(info.value).startswith(f"cannot read the checkpoint {path}: ")
    assert "\n" not in str(info.value)


def test_a_full_disk_names_the_path_and_the_free_space(make_cfg: Callable, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fsync = os.fsync

    def full(fd: int) -> None:  # the disk fills while the checkpoint is written
        if "checkpoint.pt" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)
    monkeypatch.setattr(rundir.os, "fsync", full)
    with pytest.raises(UserError) as info:
        trainer.run(make_cfg("pipeline_backend=naive"), tmp_path, [])
    message = str(info.value)
    assert message.startswith(f"no space left on the device writing {tmp_path / 'checkpoint.pt'} (")
    assert "MiB free there); the previous file is kept" in message
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "checkpoint.pt").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == message


@pytest.mark.slow
def test_ctrl_c_is_one_line_saying_how_to_resume_and_exit_130(tmp_path: Path) -> None:
    args = [*TINY, *TEST_MODEL, "pipeline_backend=naive", "schedule.epochs=200"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 150
    while not (tmp_path / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    (line,) = [line for line in out.splitlines() if "ERROR" in line]
    assert "error: interrupted in epoch " in line and "is kept; to continue: python train.py " in line
    assert line.endswith(f"resume=true hydra.run.dir={tmp_path}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] in line
    assert not (tmp_path / "run.lock").exists()


def test_the_checkpoint_keeps_the_config_without_the_link_secret(tmp_path: Path) -> None:
    from edgesplit.logs.logbook import public_config
    cfg = compose_config(["pipeline_backend=dist", "pipeline_backend.secret=0123456789abcdef0123"])
    saved = public_config(cfg)
    assert "secret" not in saved["pipeline_backend"] and saved["pipeline_backend"]["chunks"] == 4
    assert cfg.pipeline_backend.secret == "0123456789abcdef0123"  # the run's own config is intact
    checkpoint.atomic_save({"config": saved}, tmp_path / "c.pt")
    assert b"0123456789abcdef0123" not in (tmp_path / "c.pt").read_bytes()


@pytest.mark.slow
def test_a_cloud_stage_resumes_its_dropout_draws_from_the_checkpoint(tmp_path: Path) -> None:
    """A dist cloud process draws dropout from its own RNG, which the trainer's per-epoch seed does
    not reach: its checkpoint slot makes a resumed stage draw as the uninterrupted one does."""
    from tests.dist_helpers import build, config, data
    from tests.dropout_units import units
    cfg = config(chunks=2, stages=1)
    cfg.model._target_ = "tests.dropout_units.units"
    batches = data(4)

    def losses(backend: Any, some: list) -> list:
        return [r.loss_sum / r.count for r in (backend.train_step(x, y, ids) for x, y, ids in some)]
    backend = build("dist", cfg, units=units())
    try:
        backend.start_epoch(0)
        backend.train(True)
        losses(backend, batches[:2])
        state = {**backend.state_dict(), "epoch": 1}
        expected = losses(backend, batches[2:])
    finally:
        backend.close()
    resumed = build("dist", cfg, units=units())
    try:
        resumed.load_state_dict(state)
        resumed.start_epoch(0)
        resumed.train(True)
        assert losses(resumed, batches[2:]) == expected
    finally:
        resumed.close()
