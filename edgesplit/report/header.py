"""A report's header: what was run (each sweep's command as Hydra recorded it, its dir), when, and the
overrides every run shares."""
import datetime
import shlex
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from edgesplit.report.runs import Run

MAX_COMMANDS = 3  # single runs from more places than this: a count, not every command


def _task(hydra_yaml: Path) -> Optional[list[str]]:
    """hydra.overrides.task of a Hydra record (multirun.yaml or a run's .hydra/hydra.yaml)."""
    try:
        data: Any = yaml.safe_load(hydra_yaml.read_text())
        task = data["hydra"]["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return [str(o) for o in task] if isinstance(task, list) else None


def command(run: Run) -> tuple[Path, Optional[str]]:
    """Where a run's command is recorded (its sweep dir, or the run dir itself) and the command."""
    sweep = run.path.parent
    if (sweep / "multirun.yaml").is_file():
        task = _task(sweep / "multirun.yaml")
        return sweep, None if task is None else shlex.join(["python", "train.py", "-m", *task])
    task = _task(run.path / ".hydra" / "hydra.yaml")
    return run.path, None if task is None else shlex.join(["python", "train.py", *task])


def _when(runs: Sequence[Run]) -> str:
    """From the first run's start (Hydra's .hydra/ dir) to the last summary.json written."""
    def mtimes(name: str) -> list[float]:
        return [p.stat().st_mtime for r in runs for p in [r.path / name] if p.exists()]
    starts, ends = mtimes(".hydra"), mtimes("summary.json")
    if not starts:
        return "unknown"

    def fmt(t: float) -> str:
        return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")
    return fmt(min(starts)) + (f" to {fmt(max(ends))} (last summary.json written)" if ends else " (started)")


def shared_overrides(runs: Sequence[Run]) -> list[str]:
    """`key=value` of each override that every run has with the same value, in the first run's order."""
    if not runs:
        return []
    first = runs[0].overrides
    return [f"{k}={v}" for k, v in first.items() if all(r.overrides.get(k) == v for r in runs[1:])]


def header_lines(runs: Sequence[Run]) -> list[str]:
    """Markdown lines: the command(s), the date, and the settings every run shares."""
    commands = dict.fromkeys(command(r) for r in runs)
    sweeps = [(where, cmd) for where, cmd in commands if (where / "multirun.yaml").is_file()]
    singles = [(where, cmd) for where, cmd in commands if (where, cmd) not in sweeps]
    lines = [f"- command: `{cmd or '(not recorded)'}` (sweep dir `{where}`)" for where, cmd in sweeps]
    if len(singles) > MAX_COMMANDS:
        lines.append(f"- {len(singles)} single runs, each its own command (its .hydra/overrides.yaml)")
    else:
        lines += [f"- command: `{cmd or '(not recorded)'}` (run dir `{where}`)" for where, cmd in singles]
    shared = shared_overrides(runs)
    lines += [f"- date: {_when(runs)}",
              "- every run: " + (" ".join(f"`{o}`" for o in shared) if shared else "no override in common")]
    return lines
