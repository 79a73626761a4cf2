"""README as written: its fenced commands marked `<!-- test: run -->` (or `<!-- test: run 1-3 -->`:
the block's first three commands) run in a fresh dir, shrunk to seconds by SHRINK; and its lists
that the code writes (the TensorBoard tags) are complete."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.conftest import ROOT

MARK = re.compile(r"<!-- test: run(?: (\d+)-(\d+))? -->\n```bash\n(.*?)```", re.S)
# appended to every `train.py` command: the tiny sizes (README's commands are shrunk studies already)
SHRINK = "data.train_size=64 data.val_size=32 schedule.epochs=1 model.width=0.125"


def marked_commands(readme: str) -> List[List[str]]:
    """Per marked block its commands (continued lines joined; blank and comment lines dropped),
    those the marker numbers or all."""
    blocks = []
    for first, last, body in MARK.findall(readme):
        lines = [line for line in body.replace("\\\n", " ").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        blocks.append(lines[int(first) - 1:int(last)] if first else lines)
    return blocks


def _run(commands: List[str], where: Path) -> Tuple[int, str]:
    for name in ("train.py", "conf"):  # Hydra finds conf/ beside the script as it was given
        (where / name).symlink_to(ROOT / name)
    shrunk = [f"{c} {SHRINK}" if re.search(r"\btrain\.py\b", c) else c for c in commands]
    script = "\n".join(['set -e', 'python() { "$PY" "$@"; }', *shrunk]) + "\n"
    env = dict(os.environ, PY=sys.executable, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="0")
    proc = subprocess.run(["bash", "-c", script], cwd=where, env=env, capture_output=True, text=True,
                          timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_marked_commands_are_the_shrunk_backends_study() -> None:
    """What the slow test below runs: keep it cheap when README changes."""
    blocks = marked_commands((ROOT / "README.md").read_text())
    assert len(blocks) == 1 and blocks[0][0].startswith('S="data=digits')
    assert [c.split()[:4] for c in blocks[0][1:]] == [
        ["python", "train.py", "-m", "experiment=backends"],
        ["python", "-m", "edgesplit.report", "multirun/backends_digits"]]


@pytest.mark.slow
def test_readmes_marked_commands_run_as_written(tmp_path: Path) -> None:
    """The shrunk backends study finishes all three jobs (naive ignores the shared chunks=2, saying
    so and recording chunks 1) and its report has the backends table."""
    for commands in marked_commands((ROOT / "README.md").read_text()):
        code, out = _run(commands, tmp_path)
        assert code == 0, out[-3000:]
    sweep = tmp_path / "multirun" / "backends_digits"
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    summaries = {json.loads((j / "summary.json").read_text())["backend"]: j for j in jobs}
    assert sorted(summaries) == ["dist", "gpipe", "naive"]
    for backend, job in summaries.items():
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["chunks"] == (1 if backend == "naive" else 2)
    said = (summaries["naive"] / "train.log").read_text()
    assert ("pipeline_backend=naive runs the whole batch at once: pipeline_backend.chunks=2 from the "
            "sweep's shared overrides is ignored (chunks 1)") in said
    assert "## Pipeline backends" in (sweep / "report.md").read_text()


def test_readme_lists_every_tensorboard_tag(trained_run) -> None:
    """Each scalar tag a run writes (the shared trained run's, gpipe: sides edge and cloud) is in
    README's `tb/` row, a side or a boundary crossing by its placeholder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run.straight / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| `tb/`"))
    tags = set(acc.Tags()["scalars"])
    assert {"train/step_loss", "val/best_acc1", "time/edge_compute_s", "memory/cloud_peak_bytes"} <= tags
    for tag in tags:
        family = re.sub(r"^(time|memory)/(edge|cloud|cloud_stage\d+)_", r"\1/<side>_", tag)
        family = re.sub(r"^boundary/[a-z]+_[a-z]+/", "boundary/<front|back>_<forward|backward>/", family)
        assert f"`{family}`" in row or family.endswith("/sparsity") and "`/sparsity`" in row, tag
