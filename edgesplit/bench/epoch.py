"""Seconds per epoch on full-size CIFAR-10-format data, data path included; the seed's studies projected."""
import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, cast

from edgesplit.bench._cifar_files import write_cifar10
from edgesplit.bench.machine import header_lines

# The seed's studies as conf/experiment/ runs them: epochs, and the (backend, compressor) of each job
# (tests/test_bench_epoch.py checks them against the presets).
STUDIES: Dict[str, Tuple[int, List[Tuple[str, str]]]] = {
    "edge_grid": (200, [("gpipe", "prune")] * 9),
    "quant_lr": (200, [("gpipe", c) for c in ("none", "quantize8", "quantize4") for _ in range(3)]),
    "backends": (100, [("naive", "none"), ("gpipe", "none"), ("dist", "none")]),
}
CELLS = "gpipe:prune,gpipe:none,gpipe:quantize8,gpipe:quantize4,naive:none,dist:none"


class TimedLoader:
    """The loader as the trainer iterates it, cut to `limit` batches, adding up the time spent
    waiting for each batch (the data path: workers, augmentation, collation, pinning)."""

    def __init__(self, loader: Any, limit: Optional[int]) -> None:
        self.loader, self.dataset = loader, loader.dataset
        self.limit = len(loader) if limit is None else min(limit, len(loader))
        self.wait_s = 0.0

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        for _ in range(self.limit):
            tic = time.perf_counter()
            batch = next(it)
            self.wait_s += time.perf_counter() - tic
            yield batch


class _NoLog:
    def scalars(self, values: Dict[str, float], step: int) -> None:
        pass


def overrides_of(args: argparse.Namespace, cell: str) -> List[str]:
    backend, compressor = cell.split(":")
    cloud = "0" if args.device == "cuda" else "cpu"
    edge = "cpu" if args.device == "cpu" or (backend == "dist" and args.dist_edge == "cpu") else "0"
    out = ["data=cifar10", f"data.root={args.data_root}", "data.download=false", "+data.verify=false",
           f"data.batch_size={args.batch}", f"model.width={args.width}", f"compressor={compressor}",
           f"pipeline_backend={backend}",
           f"pipeline_backend.chunks={1 if backend == 'naive' else args.chunks}",
           f"pipeline_backend.devices=[{edge},{cloud},{edge}]"]
    if args.num_workers is not None:
        out.append(f"data.num_workers={args.num_workers}")
    if args.threads:
        out.append(f"threads={args.threads}")
    return out + list(args.override)


def measure(overrides: List[str], warmup: int, steps: Optional[int],
            eval_batches: Optional[int]) -> Dict[str, Any]:
    """One epoch as the trainer runs it (its loaders, train_epoch, evaluate) after `warmup` untimed
    steps; `steps` / `eval_batches` cut it short, and the figures are projected to the whole epoch."""
    from edgesplit.assemble import assemble
    from edgesplit.backends import build_backend
    from edgesplit.boundary.meter import CommMeter
    from edgesplit.config import compose_config
    from edgesplit.data.datasets import build_loader
    from edgesplit.logs.logbook import Logbook
    from edgesplit.run.steptimes import RunStepTimes
    from edgesplit.run.trainer import evaluate, train_epoch, train_loader

    cfg = compose_config(overrides)
    parts = assemble(cfg)
    datasets = parts.datasets
    assert datasets is not None
    backend = build_backend(parts, CommMeter())
    d = cfg.data
    # data.device: the set kept on the device and augmented there, as the trainer does; its copy
    # to the device is made once per run, before the epoch, so it is not timed either
    resident = None if d.device == "cpu" else datasets.resident_train(d.device)
    try:
        backend.start_epoch(0)
        backend.train(True)
        warm = TimedLoader(train_loader(cfg, datasets, resident, 0), warmup)
        for x, y, ids in warm:  # compilation, autotuning: not timed
            backend.train_step(x, y, ids)
        train = TimedLoader(train_loader(cfg, datasets, resident, 1), steps)
        backend.start_epoch(1)
        tic = time.perf_counter()
        train_epoch(backend, train, 1, cfg, cast(Logbook, _NoLog()), "", RunStepTimes())
        train_s = time.perf_counter() - tic
        val = TimedLoader(build_loader(datasets.val, d.eval_batch_size or d.batch_size, train=False,
                                       seed=cfg.seed, epoch=0, num_workers=d.num_workers),
                          eval_batches)
        tic = time.perf_counter()
        evaluate(backend, val)
        eval_s = time.perf_counter() - tic
    finally:
        backend.close()
    return {"steps": len(train), "steps_per_epoch": len(train.loader), "train_s": train_s,
            "data_wait_s": train.wait_s, "eval_batches": len(val), "eval_batches_per_epoch": len(val.loader),
            "eval_s": eval_s, "images": parts.spec.facts.train_size, "batch": d.batch_size,
            "num_workers": d.num_workers, "data_device": str(d.device)}


def per_epoch(r: Dict[str, Any]) -> Dict[str, float]:
    """The measured figures scaled to a whole epoch (exact when the whole epoch was timed)."""
    scale = r["steps_per_epoch"] / max(r["steps"], 1)
    train_s, data_s = r["train_s"] * scale, r["data_wait_s"] * scale
    eval_s = r["eval_s"] * r["eval_batches_per_epoch"] / max(r["eval_batches"], 1)
    return {"train_s": train_s, "data_s": data_s, "eval_s": eval_s, "epoch_s": train_s + eval_s}


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def tables(results: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| backend | compressor | data | steps/epoch | timed | train s/epoch | data wait s/epoch | "
             "data share | eval s/epoch | s/epoch | train images/s |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    epoch_s: Dict[Tuple[str, str], float] = {}
    for cell, r in results.items():
        backend, compressor = cell.split(":")
        if "error" in r:
            lines.append(f"| {backend} | {compressor} | failed: {r['error']} |" + " |" * 8)
            continue
        e = per_epoch(r)
        epoch_s[backend, compressor] = e["epoch_s"]
        timed = "all" if r["steps"] == r["steps_per_epoch"] else f"{r['steps']} steps, projected"
        device = r.get("data_device", "cpu")
        data = f"loader, {r['num_workers']} workers" if device == "cpu" else f"resident on {device}"
        lines.append(f"| {backend} | {compressor} | {data} | {r['steps_per_epoch']} | {timed} | "
                     f"{e['train_s']:.1f} | "
                     f"{e['data_s']:.2f} | {100 * e['data_s'] / e['train_s']:.1f}% | {e['eval_s']:.1f} | "
                     f"{e['epoch_s']:.1f} | {r['steps_per_epoch'] * r['batch'] / e['train_s']:.0f} |")
    lines += ["", "Projected wall time of the seed's studies on this machine at the sizes above (jobs one "
              "after another, each epoch as measured for its backend and compressor):", "",
              "| study | jobs x epochs | per job | whole study |", "|---|---|---|---|"]
    for study, (epochs, jobs) in STUDIES.items():
        missing = sorted({f"{b}:{c}" for b, c in jobs if (b, c) not in epoch_s})
        if missing:
            lines.append(f"| {study} | {len(jobs)} x {epochs} | — | needs --cells {','.join(missing)} |")
            continue
        per_job = [f"{b} {c}: {duration(epochs * epoch_s[b, c])}" for b, c in dict.fromkeys(jobs)]
        total = sum(epochs * epoch_s[j] for j in jobs)
        lines.append(f"| {study} | {len(jobs)} x {epochs} | {'; '.join(per_job)} | {duration(total)} |")
    return "\n".join(lines)


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edgesplit.bench epoch", description=__doc__)
    p.add_argument("--cells", default=CELLS,
                   help="backend:compressor,... (compressor: a conf/compressor option)")
    p.add_argument("--data-root", default=None,
                   help="where the generated files go (reused when they are there); default: a temp dir")
    p.add_argument("--images", type=int, default=50_000, help="training images generated (CIFAR-10: 50000)")
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dist-edge", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--num-workers", type=int, default=None, help="data.num_workers (default: the config's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed epoch")
    p.add_argument("--steps", type=int, default=None, help="time this many steps and project (default: all)")
    p.add_argument("--eval-batches", type=int, default=None, help="evaluate this many batches and project")
    p.add_argument("--override", action="append", default=[], help="extra train.py override (repeatable)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="edgesplit-cifar-") as tmp:
        args.data_root = str(Path(args.data_root or tmp).resolve())
        tic = time.perf_counter()
        write_cifar10(Path(args.data_root), args.images, args.test_images)
        print(f"data: {args.images} + {args.test_images} generated images in CIFAR-10's format under "
              f"{args.data_root} ({time.perf_counter() - tic:.1f} s)", file=sys.stderr)
        results: Dict[str, Dict[str, Any]] = {}
        for cell in [c for c in args.cells.split(",") if c]:
            try:
                results[cell] = measure(overrides_of(args, cell), args.warmup, args.steps, args.eval_batches)
            except Exception as e:  # one failed cell is a row, the others are still measured
                results[cell] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
            print(f"{cell}: done", file=sys.stderr)
    first = next((r for r in results.values() if "error" not in r), {})
    lines = header_lines("epoch", argv)
    lines[-1] += (f"; {first.get('images', args.images)} generated training images in CIFAR-10's format, "
                  f"batch {args.batch}, width {args.width}, data.num_workers {first.get('num_workers', '?')}")
    print("\n".join(lines))
    print()
    print(tables(results))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
