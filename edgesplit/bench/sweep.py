"""Wall time of one sweep run serially (Hydra's basic launcher), then as parallel joblib jobs."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgesplit.bench.machine import header_lines

TRAIN = Path(__file__).resolve().parents[2] / "train.py"


def sweep_args(args: argparse.Namespace) -> List[str]:
    """The sweep: the smoke preset over the partition grid, at the benchmark's sizes."""
    fronts, backs = args.grid.split("x")
    out = ["-m", f"experiment={args.experiment}", f"partition.front={fronts}", f"partition.back={backs}"]
    if args.epochs is not None:
        out.append(f"schedule.epochs={args.epochs}")
    if args.train_size is not None:
        out.append(f"data.train_size={args.train_size}")
    return out + list(args.override)


def run_sweep(args: argparse.Namespace, launcher: List[str], sweep_dir: Path) -> Dict[str, Any]:
    """One sweep in a fresh process: its wall time and how many of its jobs finished."""
    cmd = [sys.executable, str(TRAIN), *sweep_args(args), *launcher, f"hydra.sweep.dir={sweep_dir}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TRAIN.parent), os.environ.get("PYTHONPATH", "")]))
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=TRAIN.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    finished = [s for s in summaries if s.get("status") == "finished"]
    result: Dict[str, Any] = {"wall_s": wall, "jobs": len(summaries), "finished": len(finished),
                              "rc": proc.returncode}
    if proc.returncode != 0:
        result["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return result


def table(results: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| launcher | jobs finished | wall time (s) | s per job | speed-up vs serial |",
             "|---|---|---|---|---|"]
    serial = results.get("serial", {}).get("wall_s")
    for name, r in results.items():
        speedup = f"{serial / r['wall_s']:.2f}x" if serial and r.get("rc") == 0 else "—"
        failed = f" (exit {r['rc']}: {r.get('error', '')})" if r["rc"] else ""
        status = f"{r['finished']}/{r['jobs']}{failed}"
        lines.append(f"| {name} | {status} | {r['wall_s']:.1f} | {r['wall_s'] / max(r['jobs'], 1):.1f} | "
                     f"{speedup} |")
    return "\n".join(lines)


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edgesplit.bench sweep", description=__doc__)
    p.add_argument("--experiment", default="smoke", help="the preset swept (default: smoke, on digits)")
    p.add_argument("--grid", default="1,2,3x1,2,3", help="partition.front values x partition.back values")
    p.add_argument("--n-jobs", type=int, default=3, help="joblib's parallel jobs")
    p.add_argument("--epochs", type=int, default=None, help="schedule.epochs (default: the preset's)")
    p.add_argument("--train-size", type=int, default=None, help="data.train_size (default: the preset's)")
    p.add_argument("--override", action="append", default=[], help="extra train.py override (repeatable)")
    p.add_argument("--keep", default=None, help="keep the sweep dirs under this dir (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"]
    launchers: Dict[str, List[str]] = {"serial": [], f"joblib n_jobs={args.n_jobs}": joblib}
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgesplit-sweep-") as tmp:
        root = Path(args.keep or tmp)
        for i, (name, launcher) in enumerate(launchers.items()):
            results[name] = run_sweep(args, launcher, root / f"{i}_{name.split()[0]}")
            print(f"{name}: {results[name]['wall_s']:.1f} s", file=sys.stderr)
    print("\n".join(header_lines("sweep", argv)))
    print(f"\n    python train.py {' '.join(sweep_args(args))} [hydra/launcher=joblib "
          f"hydra.launcher.n_jobs={args.n_jobs}]\n")
    print(table(results))
    return 1 if any(r["rc"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
