"""A NaN in evaluation, with or without a compressor, stops the run as a diverged train step does."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from edgesplit.backends.local import LocalBackend
from edgesplit.errors import TrainingDiverged
from edgesplit.logs.summary import read_summary
from edgesplit.run import trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("compressor", ["none", "quantize", "prune", "prune_quantize"])
def test_a_nan_in_evaluation_fails_the_run_with_one_line_and_a_summary(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressor: str) -> None:
    real_eval_step = LocalBackend.eval_step

    def nan_input(self: LocalBackend, x: torch.Tensor, y: torch.Tensor) -> Any:
        x = x.clone()
        x[0] = float("nan")
        return real_eval_step(self, x, y)
    monkeypatch.setattr(LocalBackend, "eval_step", nan_input)
    with pytest.raises(TrainingDiverged) as info:
        trainer.run(make_cfg("pipeline_backend=naive", f"compressor={compressor}"), tmp_path, [])
    message = str(info.value)
    assert "\n" not in message and "no checkpoint was written yet" in message
    if compressor != "none":  # the boundary refuses the NaN (none lets it reach the loss)
        assert message.startswith("boundary front: the forward tensor to encode holds NaN or inf in "
                                  "the evaluation after epoch 1 (schedule.lr=0.05)")
    summary = read_summary(tmp_path)
    assert summary is not None and (summary.status, summary.epochs, summary.error) == ("failed", 0, message)


@pytest.mark.slow
def test_train_py_ends_a_nan_evaluation_with_one_line_and_a_failed_summary(tmp_path: Path) -> None:
    """The issue's repro: lr 50 turns the activations to NaN by the first evaluation."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=smoke", "schedule.epochs=2",
                           "data.train_size=128", "data.val_size=64", "schedule.lr=50",
                           "compressor=quantize", "threads=1", f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "holds NaN or inf in the evaluation after epoch 1" in errors[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "NaN or inf in the evaluation" in summary["error"]
