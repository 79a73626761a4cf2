"""Honest figures: the run's median step over every epoch and across a resume, log lines with the
pace since the line before, per-job peak memory, the machine's load."""
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest
from omegaconf import DictConfig
import torch

from edgesplit.run import checkpoint, memory, trainer
from edgesplit.run.steptimes import Pace, RunStepTimes, StepHistogram, epoch_median
from tests.trained_run import Interrupt
from tests.conftest import TEST_MODEL


@pytest.fixture
def make_cfg(make_cfg: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    """The tiny config on the 5-unit test model: these tests are about the run's plumbing."""
    return lambda *overrides: make_cfg(*TEST_MODEL, *overrides)


# ------------------------------------------------------------------------------- step times
def test_histogram_median_is_within_half_a_percent_and_merges() -> None:
    rng = random.Random(0)
    for n in (1, 2, 7, 100, 1001):
        times = [rng.lognormvariate(-2, 1.5) for _ in range(n)]
        h = StepHistogram()
        for t in times:
            h.add(t)
        assert h.count == n
        assert h.median() == pytest.approx(statistics.median(times), rel=0.005)
    a, b, both = StepHistogram(), StepHistogram(), StepHistogram()
    for i, t in enumerate(times):
        (a if i % 3 else b).add(t)
        both.add(t)
    restored = StepHistogram(a.state_dict())  # as a checkpoint holds it
    restored.merge(b)
    assert restored.state_dict() == both.state_dict()
    assert StepHistogram().median() is None


def test_run_step_times_leave_out_the_warm_up_step_unless_it_is_the_only_one() -> None:
    times = RunStepTimes()
    assert times.add(5.0) is False and times.median() == 5.0
    assert times.add(0.1) is True and times.add(0.3) is True
    assert times.median() == pytest.approx(0.2, rel=0.005)
    assert epoch_median([5.0, 0.1, 0.3], [False, True, True]) == pytest.approx(0.2)
    assert epoch_median([5.0], [False]) == 5.0


def test_pace_is_the_wall_clock_since_the_line_before() -> None:
    pace = Pace()
    time.sleep(0.2)
    pace.step(64)
    pace.step(64)
    s_per_step, samples_per_s = map(float, re.findall(r"([\d.]+) s/step, ([\d.]+) samples/s over 2 steps",
                                                      pace.line())[0])
    assert s_per_step == pytest.approx(0.1, abs=0.05) and samples_per_s == pytest.approx(128 / 0.2, rel=0.3)
    assert "over 0 steps" in pace.line()  # the next span starts at the line


def _slowed(monkeypatch: pytest.MonkeyPatch, delay: Callable[[int], float], record: List[float]) -> None:
    """Each training step of the run's backend sleeps delay(epoch) first; record holds the durations."""
    build = trainer.build_backend

    def slow_build(*args: Any, **kwargs: Any) -> Any:
        backend = build(*args, **kwargs)
        step, start, epoch = backend.train_step, backend.start_epoch, [0]

        def start_epoch(e: int) -> None:
            epoch[0] = e
            start(e)

        def train_step(*a: Any, **k: Any) -> Any:
            tic = time.perf_counter()
            time.sleep(delay(epoch[0]))
            out = step(*a, **k)
            record.append(time.perf_counter() - tic)
            return out
        backend.start_epoch, backend.train_step = start_epoch, train_step
        return backend
    monkeypatch.setattr(trainer, "build_backend", slow_build)


@pytest.mark.slow
def test_time_per_batch_is_the_median_of_every_step_after_the_first(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Slow first two epochs, a fast last one: the run's figure is the slow median of all steps (the
    last epoch's alone would be fast); log lines come after the first step and give the pace."""
    steps: List[float] = []
    _slowed(monkeypatch, lambda epoch: 0.5 if epoch < 2 else 0.0, steps)
    cfg = make_cfg("pipeline_backend=naive", "pipeline_backend.chunks=1", "schedule.epochs=3", "log_every=2")
    with caplog.at_level("INFO", logger="edgesplit.run.trainer"):
        summary = trainer.run(cfg, tmp_path, [])
    assert len(steps) == 12  # 3 epochs of 256 / 64
    assert summary["time_per_batch_s"] == pytest.approx(statistics.median(steps[1:]), rel=0.02)
    assert summary["time_per_batch_s"] > summary["history"][-1]["time_per_batch_s"] + 0.25
    assert summary["samples_per_s"] == pytest.approx(64 / summary["time_per_batch_s"])
    for h, own in zip(summary["history"], (steps[1:4], steps[4:8], steps[8:12])):
        assert h["time_per_batch_s"] == pytest.approx(statistics.median(own), rel=0.02)
        assert h["samples_per_s"] == pytest.approx(64 / h["time_per_batch_s"])
        assert h["peak_memory_bytes"] > 0 and h["up_bytes_per_batch"] > 0 and h["down_bytes_per_batch"] > 0
    hist = checkpoint.load(tmp_path / "checkpoint.pt")["step_times"]["edge"]
    assert StepHistogram(hist).count == 11
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    firsts = ["epoch 1 step 1/4", "epoch 1 step 2/4", "epoch 1 step 4/4"]
    assert [line.split(" loss")[0] for line in lines[:3]] == firsts
    pace = re.findall(r"\| ([\d.]+) s/step, ([\d.]+) samples/s over (\d) steps?", lines[2])[0]
    assert float(pace[0]) >= 0.5 and int(pace[2]) == 2  # steps 3 and 4: each slept 0.5 s
    assert float(pace[1]) == pytest.approx(64 / float(pace[0]), rel=0.05)
    for key in ("load_avg_start", "load_avg_end"):
        assert len(summary[key]) == 3 and all(v >= 0 for v in summary[key])
    assert summary["cpus"] >= 1


@pytest.mark.slow
def test_a_resumed_run_reports_the_median_of_the_steps_before_the_interruption_too(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two slow epochs, killed, resumed for a fast third: the median is still a slow step's."""
    steps: List[float] = []
    _slowed(monkeypatch, lambda epoch: 0.5 if epoch < 2 else 0.0, steps)
    cfg = make_cfg("pipeline_backend=naive", "pipeline_backend.chunks=1", "schedule.epochs=3")
    with monkeypatch.context() as m:
        def write_then_die_after_two(run_dir: Path, summary: Any) -> None:
            write(run_dir, summary)
            if summary.epochs == 2:
                raise Interrupt
        write = trainer.write_summary
        m.setattr(trainer, "write_summary", write_then_die_after_two)
        with pytest.raises(Interrupt):
            trainer.run(cfg, tmp_path, [])
    cfg.resume = True
    summary = trainer.run(cfg, tmp_path, [])
    # each session's first step is warm-up: 7 slow steps of epochs 1-2 and 3 fast ones of epoch 3
    counted = steps[1:8] + steps[9:12]
    assert summary["time_per_batch_s"] == pytest.approx(statistics.median(counted), rel=0.02)
    assert summary["time_per_batch_s"] > summary["history"][-1]["time_per_batch_s"] + 0.25


# ---------------------------------------------------------------------------------- memory
def test_each_job_measures_its_own_peak_memory() -> None:
    memory.start_job()
    cpu = torch.device("cpu")
    try:
        start = memory.peak_memory_bytes(cpu)
        big = torch.ones(64 * 2**20)  # 256 MiB, touched
        time.sleep(3 * memory.SAMPLE_S)
        del big
        first = memory.peak_memory_bytes(cpu)
        assert first >= start + 200 * 2**20
        memory.start_job()  # the next job of a sweep, in the same process
        second = memory.peak_memory_bytes(cpu)
        assert second < first - 150 * 2**20
        assert second == pytest.approx(memory.rss_bytes(), rel=0.1)
    finally:
        memory.stop_job()
