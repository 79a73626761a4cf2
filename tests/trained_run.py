"""The suite's one shared trained run (a session fixture): the report, logger, figure and
resume-reading tests read its files instead of training their own; a test that changes a run dir
works on a copy (`copy_run`)."""
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import torch

from edgesplit.codecs import fused
from edgesplit.config import compose_config
from edgesplit.run import checkpoint, trainer
from tests.sizes import TEST_MODEL, TINY
from tests.sweeps import HAS_MLFLOW

# gpipe in 2 micro-batches, 3 epochs (warm-up 2, then cosine), the codec with the most state to
# restore: stochastic rounding's draw keys and error feedback's residuals (both ends of a boundary).
# resume=true from the start: a fresh dir says "starting fresh", a finished one is skipped.
TRAINED = [*TINY, *TEST_MODEL, "pipeline_backend=gpipe", "pipeline_backend.chunks=2",
           "compressor=quantize2_sr_group", "compressor.error_feedback=true", "schedule.epochs=3",
           "schedule.warmup_epochs=2", "seed=3", "resume=true"]
# The resumed copy logs to MLflow too (a result-neutral key): a resume goes on in the same MLflow run.
RESUMED = [*TRAINED, *(["logger=mlflow"] if HAS_MLFLOW else [])]


class Interrupt(Exception):
    """Stands for a kill right after an epoch's checkpoint."""


def interrupt_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next trainer.run dies after epoch 1's summary.json (before its metrics.csv row and logs)."""
    def write_then_die(run_dir: Path, summary: Any) -> None:
        real_write(run_dir, summary)
        raise Interrupt
    real_write = trainer.write_summary
    monkeypatch.setattr(trainer, "write_summary", write_then_die)


@dataclass
class TrainedRun:
    """TRAINED run start to end (`straight`), and again killed after epoch 1 and resumed (`resumed`)."""
    straight: Path
    straight_summary: Dict[str, Any]
    straight_log: str  # the straight run's log lines
    resumed: Path
    resumed_summary: Dict[str, Any]
    killed_files: set  # the file names in `resumed` right after the kill
    killed_epoch: int  # the epoch of the checkpoint the kill left


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _logged_run(run_dir: Path) -> tuple:
    lines, logger = _Lines(), logging.getLogger("edgesplit")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        return trainer.run(compose_config(TRAINED), run_dir, []), "\n".join(lines.lines)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


@contextmanager
def as_tests_run() -> Iterator[None]:
    """What conftest's autouse fixtures set (one thread, no compiled kernels), for a module or
    session fixture's run: those fixtures run after it."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fused, "COMPILE", False)
        yield


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedRun]:
    root = tmp_path_factory.mktemp("trained")
    with as_tests_run():
        straight, log = _logged_run(root / "straight")
        with pytest.MonkeyPatch.context() as kill:
            interrupt_after_first_epoch(kill)
            with pytest.raises(Interrupt):
                trainer.run(compose_config(RESUMED), root / "resumed", [])
        killed = {p.name for p in (root / "resumed").iterdir()}
        epoch = checkpoint.load(root / "resumed" / "checkpoint.pt")["epoch"]
        resumed = trainer.run(compose_config(RESUMED), root / "resumed", [])
    yield TrainedRun(root / "straight", straight, log, root / "resumed", resumed, killed, epoch)


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a shared run dir that a test may change."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))
