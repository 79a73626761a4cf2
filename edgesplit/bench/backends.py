"""Step time and peak memory of naive, gpipe and dist, and of plain PyTorch, on the same model and data."""
import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from edgesplit.bench._plain import measure_plain
from edgesplit.bench.machine import header_lines, human_bytes
from edgesplit.boundary.meter import CommFigures, CommMeter
from edgesplit.logs.summary import SideStats

# plain: the same units as one nn.Sequential, no split, no codec, a plain PyTorch step (the baseline);
# dist+link: dist under the emulated link of --link-mbps / --latency-ms
BACKENDS = ("plain", "naive", "gpipe", "dist", "dist+link")


def overrides_of(args: argparse.Namespace, name: str) -> List[str]:
    """The train.py overrides that describe one benchmark cell."""
    backend = "naive" if name == "plain" else name.split("+")[0]  # plain: a config naive accepts
    out = [
        "data=synthetic", f"data.batch_size={args.batch}", f"data.train_size={args.batch}",
        f"model.width={args.width}", f"compressor={args.compressor}",
        f"partition.front={args.front}", f"partition.back={args.back}",
        f"partition.cloud_stages={args.cloud_stages}",
        f"pipeline_backend={backend}", f"pipeline_backend.chunks={1 if backend == 'naive' else args.chunks}",
    ]
    cloud = "0" if args.device == "cuda" else "cpu"
    # dist keeps the edge on the CPU (a real edge device) unless --dist-edge cuda
    edge = "cpu" if args.device == "cpu" or (backend == "dist" and args.dist_edge == "cpu") else "0"
    out.append(f"pipeline_backend.devices=[{','.join([edge] + [cloud] * args.cloud_stages + [edge])}]")
    if name == "dist+link":
        out.append(f"pipeline_backend.link.bandwidth_mbps={args.link_mbps}")
        out.append(f"pipeline_backend.link.latency_ms={args.latency_ms}")
    if args.threads:
        out.append(f"threads={args.threads}")
    return out + list(args.override)


def measure(overrides: List[str], warmup: int, steps: int, plain: bool = False) -> Dict[str, Any]:
    """Build the backend (or plain's model) in this process, time `steps` train steps after `warmup` ones."""
    from edgesplit.assemble import assemble
    from edgesplit.backends import build_backend
    from edgesplit.config import compose_config

    cfg = compose_config(overrides)
    parts = assemble(cfg)
    assert parts.datasets is not None
    data = parts.datasets.train
    x = torch.stack([data[i][0] for i in range(cfg.data.batch_size)])
    y = torch.tensor([int(data[i][1]) for i in range(cfg.data.batch_size)])
    ids = torch.arange(cfg.data.batch_size)  # the same samples every step
    if plain:
        return measure_plain(parts, x, y, warmup, steps)
    meter = CommMeter()
    backend = build_backend(parts, meter)
    try:
        backend.start_epoch(0)
        backend.train(True)
        times = []
        for step in range(warmup + steps):
            if step == warmup:
                meter.reset()
                backend.start_epoch(0)  # statistics afresh on every side
            _sync()
            tic = time.perf_counter()
            backend.train_step(x, y, ids)
            _sync()
            if step >= warmup:
                times.append(time.perf_counter() - tic)
        sides = {side: stats.to_dict() for side, stats in backend.side_stats().items()}
        return {"times": times, "sides": sides, "comm": meter.summary().to_dict()}
    finally:
        backend.close()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_cell(overrides: List[str], warmup: int, steps: int, plain: bool = False) -> Dict[str, Any]:
    """One backend in a fresh process, so each peak RSS is its own."""
    cmd = [sys.executable, "-m", "edgesplit.bench.backends", "--worker", json.dumps(overrides),
           "--warmup", str(warmup), "--steps", str(steps), *(["--plain"] if plain else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak(cell: Dict[str, Any]) -> int:
    """The largest process's or device's peak memory of a measured cell."""
    return max(SideStats.from_dict(s).peak_memory_bytes for s in cell["sides"].values())


def baseline(results: Dict[str, Dict[str, Any]]) -> str:
    """What the ratios compare with: plain PyTorch where it was measured, else gpipe."""
    return "plain" if "times" in results.get("plain", {}) else "gpipe"


def table(results: Dict[str, Dict[str, Any]], batch: int) -> str:
    """One row per backend; payload bytes each way and, beside them, the transport's overhead;
    time and memory as ratios of plain PyTorch's (of gpipe's without a plain row)."""
    name = baseline(results)
    base = results.get(name, {})
    base_time = statistics.median(base["times"]) if "times" in base else None
    base_mem = _peak(base) if "sides" in base else None
    lines = ["| backend | median step (s) | min-max (s) | samples/s | peak edge | peak cloud | "
             f"time / {name} | memory / {name} | up B/step | down B/step | overhead up+down B/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |" + " |" * 9)
            continue
        t = statistics.median(r["times"])
        sides = {side: SideStats.from_dict(s) for side, s in r["sides"].items()}
        comm = CommFigures.from_dict(r["comm"])
        ratios = f"{t / base_time:.2f}x | {_peak(r) / base_mem:.2f}x" if base_time and base_mem else "— | —"
        overhead = comm.overhead_up_bytes_per_batch + comm.overhead_down_bytes_per_batch
        lines.append(
            f"| {name} | {t:.3f} | {min(r['times']):.3f}-{max(r['times']):.3f} | {batch / t:.1f} | "
            f"{human_bytes(sides['edge'].peak_memory_bytes)} | "
            f"{human_bytes(sides['cloud'].peak_memory_bytes)} | {ratios} | {comm.up_bytes_per_batch:.0f} | "
            f"{comm.down_bytes_per_batch:.0f} | {overhead:.0f} |")
    return "\n".join(lines)


def share_table(results: Dict[str, Dict[str, Any]], without: Dict[str, Dict[str, Any]]) -> str:
    """The codec's share of each backend's step: 1 - (step with compressor none) / (step with the
    codec), both measured in this run (on a GPU the codec kernels run asynchronously, so timing
    them one by one would measure the launches, not the work)."""
    lines = ["| backend | median step, codec (s) | median step, none (s) | codec share |",
             "|---|---|---|---|"]
    for name, r in results.items():
        other = without.get(name, {})
        if "times" not in r or "times" not in other:
            continue
        t, t0 = statistics.median(r["times"]), statistics.median(other["times"])
        lines.append(f"| {name} | {t:.4f} | {t0:.4f} | {100 * (1 - t0 / t):.1f}% |")
    return "\n".join(lines)


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edgesplit.bench backends", description=__doc__)
    p.add_argument("--backends", default="plain,naive,gpipe,dist", help=f"subset of {','.join(BACKENDS)}")
    p.add_argument("--width", type=float, default=0.5, help="model.width (1.0 = the seed's MobileNetV2)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--compressor", default="none", choices=["none", "prune", "quantize", "prune_quantize"])
    p.add_argument("--front", type=int, default=1)
    p.add_argument("--back", type=int, default=1)
    p.add_argument("--cloud-stages", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dist-edge", default="cpu", choices=["cpu", "cuda"],
                   help="with --device cuda: where dist's edge process computes")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--link-mbps", type=float, default=100.0, help="dist+link: emulated bandwidth")
    p.add_argument("--latency-ms", type=float, default=20.0, help="dist+link: emulated latency")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--override", action="append", default=[], help="extra train.py override (repeatable)")
    p.add_argument("--codec-share", action="store_true",
                   help="also time every backend with compressor none: the codec's share of a step")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.worker is not None:
        print(json.dumps(measure(json.loads(args.worker), args.warmup, args.steps, args.plain)))
        return 0
    names = [b for b in args.backends.split(",") if b]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        print(f"--backends: unknown {unknown}; allowed: {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    results, without = {}, {}
    for name in names:
        results[name] = run_cell(overrides_of(args, name), args.warmup, args.steps, name == "plain")
        print(f"{name}: done", file=sys.stderr)
        if args.codec_share and name != "plain" and args.compressor != "none":
            without[name] = run_cell(overrides_of(args, name) + ["compressor=none"], args.warmup,
                                     args.steps)
            print(f"{name} with compressor none: done", file=sys.stderr)
    print("\n".join(header_lines("backends", argv if argv is not None else sys.argv[1:])))
    print()
    print(table(results, args.batch))
    if without:
        print()
        print(share_table(results, without))
    failed = any("error" in r for r in [*results.values(), *without.values()])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
